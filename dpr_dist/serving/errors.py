"""The one error type a request can cause: it names the field at fault and maps to a 4xx status."""

from __future__ import annotations


class RequestError(ValueError):
    """Bad input from a caller (never a server fault): the HTTP layer answers ``status`` with
    ``{"error": message, "field": field}``; the CLI prints the message and exits 2."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict:
        return {"error": str(self), "field": self.field}
