"""The normalised form every ingest format produces, before ids are remapped."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

EVENT_COLUMNS = ("user", "item", "order", "source_row")
ITEM_COLUMNS = ("item", "title", "tags", "text")


@dataclass
class RawData:
    """Interactions and item metadata exactly as read, with original (string) ids.

    events: one row per interaction. ``user`` and ``item`` are original ids as str; ``order`` is an
        int64 that sorts a user's events chronologically (a timestamp, or a position when the
        source has only order); ``source_row`` is the 0-based row in the source, the tie-break for
        equal ``order`` (a stable sort keeps the file's order inside same-second bursts).
    items: one row per known item: ``item`` (str), ``title`` (str), ``tags`` (list[str], may be
        empty), ``text`` (str; title and tags joined when the source has no description).
    sources: every file read, for the manifest's checksums.
    skipped_rows: malformed rows skipped (only with ``skip_bad_rows``).
    """

    events: pd.DataFrame
    items: pd.DataFrame
    sources: list[str] = field(default_factory=list)
    skipped_rows: int = 0

    def __post_init__(self) -> None:
        missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
        missing += [c for c in ITEM_COLUMNS if c not in self.items.columns]
        if missing:
            raise ValueError(f"RawData is missing column(s): {missing}")


class BadInputError(ValueError):
    """Malformed input; the message names the file, the line (1-based) and the offending text."""

    def __init__(self, path: str, line: int | None, problem: str, text: str | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        shown = f": {text[:200]!r}" if text is not None else ""
        super().__init__(f"{where}: {problem}{shown}")
        self.path, self.line, self.problem, self.text = path, line, problem, text
