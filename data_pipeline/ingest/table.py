"""A generic interaction table (Parquet or CSV) whose columns are named by ``cfg.columns``.

``columns`` maps our names to the file's: ``user``, ``item`` and ``order`` are required; ``tags``
(a list column, or a string split on ``tag_separator``), ``title`` and ``text`` are optional. Item
metadata (tags, title, text) comes from ``items_path`` when given (same column mapping, read there
only), else from the first row of each item in the interaction file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.config import SourceConfig
from data_pipeline.ingest.delimited import INT, Layout, read_delimited
from data_pipeline.ingest.frames import (
    as_id_strings,
    describe,
    events_frame,
    items_frame,
    split_tags,
    unique_sources,
)
from data_pipeline.ingest.locate import SourceFile, require_path
from data_pipeline.records import BadInputError, RawData

EVENT_KEYS = ("user", "item", "order")
ITEM_KEYS = ("tags", "title", "text")
_TAG_LABEL = "Tags"


def load_table(cfg: SourceConfig, skip_bad_rows: bool) -> RawData:
    unknown = sorted(set(cfg.columns) - set(EVENT_KEYS) - set(ITEM_KEYS))
    missing = [key for key in EVENT_KEYS if key not in cfg.columns]
    if unknown or missing:
        raise ValueError(
            f"source.columns: unknown key(s) {unknown}, missing key(s) {missing}; "
            f"format 'table' maps {EVENT_KEYS + ITEM_KEYS} to the file's column names"
        )
    events_path = require_path(Path(cfg.path), "table", "a .parquet or .csv interaction file")
    # With an items file, the metadata columns are looked up there only.
    keys = EVENT_KEYS if cfg.items_path else (*EVENT_KEYS, *ITEM_KEYS)
    wanted = {key: cfg.columns[key] for key in keys if key in cfg.columns}
    table, skipped = _read(events_path, wanted, order_key="order", skip_bad_rows=skip_bad_rows)
    events = events_frame(table["user"], table["item"], table["order"], table["source_row"])
    sources = [events_path]
    if cfg.items_path:
        items_path = require_path(Path(cfg.items_path), "table", "an item metadata .parquet or .csv (items_path)")
        item_columns = {key: cfg.columns[key] for key in ("item", *ITEM_KEYS) if key in cfg.columns}
        item_table, item_skips = _read(items_path, item_columns, order_key=None, skip_bad_rows=skip_bad_rows)
        skipped += item_skips
        sources.append(items_path)
    else:
        item_table = _first_row_per_item(table)
    items = _items(item_table, cfg.tag_separator)
    return RawData(events=events, items=items, sources=unique_sources(sources), skipped_rows=skipped)


def _read(path: Path, columns: dict[str, str], order_key: str | None, skip_bad_rows: bool) -> tuple[pa.Table, int]:
    """Our-named columns (plus ``source_row``) of a Parquet or CSV file, and the rows skipped."""
    if path.suffix == ".parquet":
        return _read_parquet(path, columns, order_key, skip_bad_rows)
    sep = "\t" if ".tsv" in path.suffixes else ","
    kinds = {columns[order_key]: INT} if order_key else {}
    parsed = read_delimited(SourceFile(path), Layout(sep=sep, quoted=True, kinds=kinds), skip_bad_rows)
    renamed = {key: parsed.table.column(name) for key, name in columns.items()}
    renamed["source_row"] = parsed.table.column("source_row")
    return pa.table(renamed), parsed.skipped


def _read_parquet(path: Path, columns: dict[str, str], order_key: str | None, skip_bad_rows: bool):
    schema_names = pq.read_schema(path).names
    absent = sorted(name for name in columns.values() if name not in schema_names)
    if absent:
        raise BadInputError(str(path), None, f"missing column(s) {absent}; the file has {schema_names}")
    source = pq.read_table(path, columns=sorted(set(columns.values())))
    table = pa.table({key: source.column(name) for key, name in columns.items()})
    table = table.append_column("source_row", pa.array(range(table.num_rows), pa.int64()))
    required = [key for key in ("user", "item", order_key) if key in table.column_names]
    valid = functools.reduce(pc.and_, [pc.is_valid(table[k]) for k in required])
    bad = pc.sum(pc.invert(valid)).as_py() or 0
    if bad and not skip_bad_rows:
        row = pc.index(valid, False).as_py()
        nulls = [k for k in required if not table[k][row].is_valid]
        raise BadInputError(str(path), None, f"row {row} (0-based): null in column(s) {[columns[k] for k in nulls]}")
    table = table.filter(valid) if bad else table
    if order_key:
        order = _as_int64(path, table[order_key], columns[order_key])
        table = table.set_column(table.schema.get_field_index(order_key), order_key, order)
    return table, bad


def _as_int64(path: Path, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Integers, timestamps (in their own unit) and integral floats as int64."""
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        column = pc.cast(column, pa.int64() if pa.types.is_timestamp(column.type) else pa.int32())
    try:
        return pc.cast(column, pa.int64())  # a safe cast: fractional floats and overflow fail
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadInputError(str(path), None, f"column {name!r} ({column.type}) is not an integer order: {exc}") from None


def _first_row_per_item(table: pa.Table) -> pa.Table:
    """The metadata columns of each item's first row in file order."""
    keep = [k for k in ("item", *ITEM_KEYS) if k in table.column_names]
    ids = as_id_strings(table["item"])
    rows = pa.table({"item": ids, "row": pa.array(range(table.num_rows))})
    first = rows.group_by("item", use_threads=False).aggregate([("row", "min")])
    in_file_order = pc.sort_indices(first["row_min"])
    return table.select(keep).take(pc.take(first["row_min"], in_file_order))


def _items(table: pa.Table, separator: str):
    ids = as_id_strings(table["item"]).to_pylist()
    titles = table["title"].to_pylist() if "title" in table.column_names else list(ids)
    titles = [t if t is not None else i for t, i in zip(titles, ids)]
    tags = _tags(table["tags"], separator) if "tags" in table.column_names else [[] for _ in ids]
    titles = [str(t) for t in titles]
    text = [describe(title, tag, _TAG_LABEL) for title, tag in zip(titles, tags)]
    if "text" in table.column_names:  # a given description wins; rows without one keep the default
        text = [given if given else default for given, default in zip(table["text"].to_pylist(), text)]
    return items_frame(ids, titles, tags, _TAG_LABEL, text=text)


def _tags(column: pa.ChunkedArray, separator: str) -> list[list[str]]:
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return [[str(t) for t in (value or []) if t is not None] for value in column.to_pylist()]
    return [split_tags(value or "", separator) for value in column.to_pylist()]
