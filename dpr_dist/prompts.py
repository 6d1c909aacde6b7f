"""Split a user prompt into clauses, each steering the user vector on its own.

Free text: the prompt is cut at these separators (case-insensitive), in this order:

1. dropped conjunctions  ";"  ", but "  " but "   ("comedy, but nothing scary" -> "comedy" |
   "nothing scary"; "comedy but not horror" -> "comedy" | "not horror"). The negation that
   follows the conjunction stays in the clause, for the encoder and the router to read.
2. kept negations  " except "  " without "  (", except", ", without" too): the word starts the
   next clause, because there it is the only sign of negation ("action except horror" ->
   "action" | "except horror").

" and " is deliberately not a separator: "romance and comedy" is one wish, and splitting it
would cut "more" off its second half. Clauses are stripped of spaces and of ",.;:!?" at their
ends; empty ones are dropped. Free-text clauses have polarity None (unknown): learned routing
decides, hard routing needs the structured form ``{"more": [...], "less": [...]}``, whose
clauses get polarity +1 / -1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

MAX_PROMPT_CHARS = 512  # the text encoder's input limit in the data pipeline (EncoderConfig.max_prompt_chars)
MAX_CLAUSES = 8

_DROPPED = re.compile(r"\s*;\s*|\s*,\s*but\s+|\s+but\s+", re.IGNORECASE)
_KEPT = re.compile(r"\s*,?\s+(?=(?:except|without)\s)", re.IGNORECASE)
_STRIP = " \t\n,.;:!?"
STRUCTURED_KEYS = {"more": 1, "less": -1}


@dataclass(frozen=True)
class Clause:
    text: str
    polarity: int | None  # +1 more, -1 less, None = unknown (free text)


def parse_prompt(
    prompt: str | Mapping[str, Sequence[str] | str] | None,
    max_chars: int = MAX_PROMPT_CHARS,
    max_clauses: int = MAX_CLAUSES,
) -> list[Clause]:
    """Free text or ``{"more": [...], "less": [...]}`` -> clauses; None / empty -> []."""
    if prompt is None:
        return []
    if isinstance(prompt, str):
        _check_length(prompt, max_chars)
        clauses = [Clause(text, None) for text in split_clauses(prompt)]
    elif isinstance(prompt, Mapping):
        clauses = _parse_structured(prompt, max_chars)
    else:
        raise TypeError(f"prompt must be a str or a mapping with keys more/less, got {type(prompt).__name__}")
    if len(clauses) > max_clauses:
        raise ValueError(f"prompt has {len(clauses)} clauses; the limit is {max_clauses}")
    return clauses


def split_clauses(text: str) -> list[str]:
    pieces = []
    for part in _DROPPED.split(text):
        pieces.extend(_KEPT.split(part))
    return [clean for piece in pieces if (clean := piece.strip(_STRIP))]


def _parse_structured(prompt: Mapping, max_chars: int) -> list[Clause]:
    unknown = sorted(set(prompt) - set(STRUCTURED_KEYS))
    if unknown:
        raise ValueError(f"structured prompt: unknown key(s) {unknown}; allowed: {sorted(STRUCTURED_KEYS)}")
    clauses = []
    for key, polarity in STRUCTURED_KEYS.items():
        values = prompt.get(key) or []
        if isinstance(values, str):
            values = [values]
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise ValueError(f"structured prompt: {key}[{i}] must be a string, got {type(value).__name__}")
            _check_length(value, max_chars, f"{key}[{i}]")
            if text := value.strip(_STRIP):
                clauses.append(Clause(text, polarity))
    total = sum(len(c.text) for c in clauses)
    if total > max_chars:
        raise ValueError(f"structured prompt has {total} characters in all; the limit is {max_chars}")
    return clauses


def _check_length(text: str, max_chars: int, where: str = "prompt") -> None:
    if len(text) > max_chars:
        raise ValueError(f"{where} is {len(text)} characters long; the limit is {max_chars}")
