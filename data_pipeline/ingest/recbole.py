"""RecBole atomic files (``<name>.inter`` + optional ``<name>.item``), and the ML-100k copy that
ships inside the ``recbole==1.2.1`` wheel, the project's offline default data source.

Header fields are ``name:type``; columns are matched by name: user ``user_id``, item ``item_id``,
order ``timestamp`` (without one, the file's row order is the order); title ``movie_title`` or
``title``; tags from the space-separated ``class``, ``genre``, ``genres`` or ``categories``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from data_pipeline.ingest.delimited import INTLIKE, Layout, decode, header_names, read_delimited
from data_pipeline.ingest.frames import events_frame, items_frame, split_tags, unique_sources
from data_pipeline.ingest.locate import MissingSourceError, SourceFile, is_zip, require_path
from data_pipeline.records import BadInputError, RawData

WHEEL_VERSION = "1.2.1"
WHEEL_GLOB = f"recbole-{WHEEL_VERSION}-*.whl"
WHEEL_DATASET = "recbole/dataset_example/ml-100k/"
_TITLE_FIELDS = ("movie_title", "title")
_TAG_FIELDS = ("class", "genre", "genres", "categories")
_TAG_LABEL = "Genres"


def load_recbole(path: Path, skip_bad_rows: bool) -> RawData:
    inter = _find_inter(require_path(path, "recbole", "a directory or zip holding <name>.inter"))
    item_file = _sibling(inter, Path(inter.name).stem + ".item")
    events_text = decode(inter, "utf-8")
    fields = _fields(inter, header_names(inter, events_text, Layout(sep="\t")))
    user, item = _require(inter, fields, "user_id"), _require(inter, fields, "item_id")
    order = fields.get("timestamp")
    layout = Layout(sep="\t", kinds={order: INTLIKE} if order else {})
    parsed = read_delimited(inter, layout, skip_bad_rows, text=events_text)
    table = parsed.table
    # Without timestamps the file's row order is the interaction order.
    order_column = table.column(order) if order else table.column("source_row")
    events = events_frame(table.column(user), table.column(item), order_column, table.column("source_row"))
    items, item_skips = _read_items(item_file, skip_bad_rows) if item_file else (_empty_items(), 0)
    return RawData(
        events=events,
        items=items,
        sources=unique_sources(s.path for s in (inter, item_file) if s),
        skipped_rows=parsed.skipped + item_skips,
    )


def load_recbole_wheel(path: Path | None, cache_dir: Path, skip_bad_rows: bool) -> RawData:
    """Read ML-100k from the recbole wheel at ``path`` (the .whl or a directory holding it).

    Without a wheel, ``python -m pip download --no-deps recbole==1.2.1 -d <cache_dir>`` fetches it
    (2 MB, a registry package, so it works wherever pip does).
    """
    wheel = _find_wheel(path) if path else None
    if wheel is None:
        wheel = _find_wheel(cache_dir) or _pip_download(cache_dir)
    dataset_dir = _extract_dataset(wheel, cache_dir / f"recbole-{WHEEL_VERSION}-ml-100k")
    raw = load_recbole(dataset_dir, skip_bad_rows)
    raw.sources = unique_sources([wheel])
    return raw


def _read_items(source: SourceFile, skip_bad_rows: bool):
    text = decode(source, "utf-8")
    fields = _fields(source, header_names(source, text, Layout(sep="\t")))
    item = _require(source, fields, "item_id")
    title = next((fields[f] for f in _TITLE_FIELDS if f in fields), None)
    tag_field = next((fields[f] for f in _TAG_FIELDS if f in fields), None)
    table = read_delimited(source, Layout(sep="\t"), skip_bad_rows, text=text)
    ids = table.table.column(item).to_pylist()
    titles = table.table.column(title).to_pylist() if title else list(ids)
    tags = [split_tags(v, " ") for v in table.table.column(tag_field).to_pylist()] if tag_field else [[]] * len(ids)
    return items_frame(ids, titles, tags, _TAG_LABEL), table.skipped


def _empty_items():
    return items_frame([], [], [], _TAG_LABEL)


def _fields(source: SourceFile, header: tuple[str, ...]) -> dict[str, str]:
    """Bare field name -> full header name (``"user_id"`` -> ``"user_id:token"``)."""
    fields = {}
    for column in header:
        if ":" not in column:
            raise BadInputError(source.display, 1, f"header field {column!r} is not of the form name:type")
        fields.setdefault(column.split(":", 1)[0], column)
    return fields


def _require(source: SourceFile, fields: dict[str, str], name: str) -> str:
    if name not in fields:
        raise BadInputError(source.display, 1, f"no {name!r} field in the header (has {sorted(fields)})")
    return fields[name]


def _find_inter(path: Path) -> SourceFile:
    if path.is_file() and not is_zip(path):
        return SourceFile(path)
    if is_zip(path):
        with zipfile.ZipFile(path) as archive:
            members = sorted(m for m in archive.namelist() if m.endswith(".inter"))
        found = [SourceFile(path, m) for m in members]
    else:
        found = [SourceFile(p) for p in sorted(path.glob("*.inter"))]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(f.name for f in found)})"
        raise MissingSourceError(f"{path}: {what} .inter files; format 'recbole' expects exactly one <name>.inter")
    return found[0]


def _sibling(source: SourceFile, name: str) -> SourceFile | None:
    """``name`` in the same directory (or zip folder) as ``source``, if it exists."""
    if source.member is None:
        candidate = source.path.parent / name
        return SourceFile(candidate) if candidate.is_file() else None
    member = f"{source.member.rsplit('/', 1)[0]}/{name}" if "/" in source.member else name
    with zipfile.ZipFile(source.path) as archive:
        return SourceFile(source.path, member) if member in archive.namelist() else None


def _find_wheel(path: Path) -> Path | None:
    if path.is_file():
        return path
    wheels = sorted(path.glob(WHEEL_GLOB)) if path.is_dir() else []
    return wheels[-1] if wheels else None


def _pip_download(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", f"recbole=={WHEEL_VERSION}", "-d", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = _find_wheel(cache_dir)
    if result.returncode != 0 or wheel is None:
        raise MissingSourceError(
            f"format 'recbole-wheel': no {WHEEL_GLOB} given and `{' '.join(command)}` failed:\n{result.stderr[-2000:]}"
        )
    return wheel


def _extract_dataset(wheel: Path, target: Path) -> Path:
    """Unpack only the ML-100k example folder (once; a temporary dir is renamed into place)."""
    if target.is_dir():
        return target
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(WHEEL_DATASET) and not m.endswith("/")]
        if not members:
            raise MissingSourceError(f"{wheel}: holds no {WHEEL_DATASET}; format 'recbole-wheel' expects the recbole wheel")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for member in members:
                (staging / Path(member).name).write_bytes(archive.read(member))
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
