"""Assembling :class:`RawData` frames from parsed Arrow columns (shared by every format)."""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def as_id_strings(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Original ids as str; integer ids in canonical decimal form ("007" was already parsed to 7)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    return pc.cast(column, pa.string())


def events_frame(user, item, order, source_row) -> pd.DataFrame:
    """The ``RawData.events`` frame: user/item str, order/source_row int64."""
    table = pa.table(
        {
            "user": as_id_strings(user),
            "item": as_id_strings(item),
            "order": pc.cast(order, pa.int64()),
            "source_row": pc.cast(source_row, pa.int64()),
        }
    )
    return table.to_pandas()


def describe(title: str, tags: Sequence[str], label: str, extra: Sequence[str] = ()) -> str:
    """Item text for the encoder: ``"Heat (1995). Genres: Action, Crime"``.

    An item with no tags gets its title alone rather than a dangling ``"Genres: "``.
    """
    text = f"{title}. {label}: {', '.join(tags)}" if tags else title
    if extra:
        text = f"{text}. Tags: {', '.join(extra)}"
    return text


def items_frame(
    item: Iterable[str],
    title: Iterable[str],
    tags: Iterable[list[str]],
    label: str,
    text: Iterable[str] | None = None,
    extra: Iterable[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """The ``RawData.items`` frame; ``text`` defaults to :func:`describe` of title and tags."""
    item, title, tags = list(item), list(title), [list(t) for t in tags]
    if text is None:
        extras = list(extra) if extra is not None else [()] * len(item)
        text = [describe(ti, tg, label, ex) for ti, tg, ex in zip(title, tags, extras)]
    return pd.DataFrame({"item": pd.Series(item, dtype=str), "title": title, "tags": tags, "text": list(text)})


def split_tags(value: str, separator: str, none_marker: str | None = None) -> list[str]:
    """``"Action|Crime"`` -> ``["Action", "Crime"]``; empty or ``none_marker`` -> ``[]``."""
    value = value.strip()
    if not value or value == none_marker:
        return []
    return [tag.strip() for tag in value.split(separator) if tag.strip()]


def unique_sources(paths: Iterable) -> list[str]:
    """Absolute paths, each once, in first-read order."""
    seen: dict[str, None] = {}
    for path in paths:
        seen.setdefault(str(path.resolve() if hasattr(path, "resolve") else path), None)
    return list(seen)
