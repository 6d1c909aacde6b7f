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
    item: Iterable[str] | pa.ChunkedArray,
    title: Iterable[str] | pa.ChunkedArray,
    tags: Iterable[list[str]] | pa.ChunkedArray,
    label: str,
    text: Iterable[str] | pa.ChunkedArray | None = None,
    extra: Iterable[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """The ``RawData.items`` frame; ``text`` defaults to :func:`describe` of title and tags.

    Columns may be Arrow arrays (string, and list<string> for tags): they go to pandas without a
    Python object per cell, which is what keeps a 20M-item catalogue's ingest within a few GB.
    Tag names are interned: a catalogue has a few dozen distinct tags but tens of millions of tag
    slots, and one str object per slot costs ~50 bytes.
    """
    tags = _tag_lists(tags)
    item, title = _strings(item), _strings(title)
    if text is None:
        extras = list(extra) if extra is not None else [()] * len(item)
        text = [describe(ti, tg, label, ex) for ti, tg, ex in zip(title, tags, extras)]
    return pd.DataFrame({"item": pd.Series(item, dtype=str), "title": title, "tags": tags, "text": _strings(text)})


def _strings(column) -> list[str] | pd.Series:
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return pd.Series(column.to_pandas(), dtype=str)
    return list(column)


def _tag_lists(tags) -> list[list[str]]:
    shared: dict[str, str] = {}
    if not isinstance(tags, (pa.Array, pa.ChunkedArray)):
        return [[shared.setdefault(name, name) for name in t] for t in tags]
    tags = tags.combine_chunks() if isinstance(tags, pa.ChunkedArray) else tags
    encoded = pc.dictionary_encode(pc.list_flatten(tags))
    names = encoded.dictionary.to_pylist()
    flat = [names[i] for i in encoded.indices.to_numpy(zero_copy_only=False)]
    offsets = (pc.list_value_length(tags).fill_null(0).to_numpy(zero_copy_only=False)).cumsum()
    starts = [0, *offsets[:-1].tolist()]
    return [flat[a:b] for a, b in zip(starts, offsets.tolist())]


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
