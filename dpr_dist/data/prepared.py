"""Load a prepared data set (the layout of :mod:`dpr_dist.common.schema`) for training and evaluation.

Every check names the file at fault: a missing file, a shard listed in the manifest but absent, a
schema version this code cannot read, or tables that disagree with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from dpr_dist.common import schema


class PreparedDataError(ValueError):
    """A prepared directory is incomplete or inconsistent."""


@dataclass
class Prepared:
    root: Path
    manifest: dict
    items: pd.DataFrame               # one row per item id 1..N, in id order
    prompts: pd.DataFrame             # one row per prompt id 0..P-1, in id order
    prompt_embeddings: torch.Tensor   # float32 [P, D]
    item_tag: torch.Tensor            # bool [N+1, T]; row 0 (padding) is all False
    tag_names: list[str]

    @property
    def num_items(self) -> int:
        return len(self.items)

    def shards(self, split: str, kind: str) -> list[tuple[Path, int]]:
        """(absolute path, sample count) of every shard of one set, sorted by path."""
        return [
            (self.root / rel, int(entry["count"]))
            for rel, entry in sorted(self.manifest["shards"].items())
            if entry["split"] == split and entry["kind"] == kind
        ]


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise PreparedDataError(f"{path}: missing {what}")
    return path


def read_manifest(root: Path) -> dict:
    manifest = schema.read_manifest(root, PreparedDataError)
    path = root / schema.MANIFEST_NAME
    for key in ("tags", "shards"):
        if key not in manifest:
            raise PreparedDataError(f"{path}: no {key!r} entry")
    for rel in sorted(manifest["shards"]):
        _require(root / rel, "shard listed in the manifest")
    return manifest


def _check_ids(frame: pd.DataFrame, column: str, first: int, path: Path) -> None:
    expected = np.arange(first, first + len(frame))
    if not np.array_equal(frame[column].to_numpy(), expected):
        raise PreparedDataError(f"{path}: column {column!r} must be {first}..{first + len(frame) - 1} in order")


def item_tag_matrix(item_ids: np.ndarray, tags: pa.Array | pa.ChunkedArray, tag_names: list[str], path: Path) -> torch.Tensor:
    """Bool ``[N+1, T]``: item id i carries tag t, from the Arrow ``list<string>`` column as read.
    Unknown tag names are an error naming the item. Computed in Arrow, never one Python object per
    tag slot: a 20M-item catalogue has ~50M of them (GBs as Python strings, on every rank)."""
    tags = tags.combine_chunks() if isinstance(tags, pa.ChunkedArray) else tags
    lengths = pc.list_value_length(tags).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(tags)
    codes = pc.index_in(flat, value_set=pa.array(tag_names, type=flat.type)).fill_null(-1).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.asarray(item_ids, dtype=np.int64), lengths)
    unknown = np.flatnonzero(codes < 0)
    if len(unknown):
        i = unknown[0]
        raise PreparedDataError(f"{path}: item {rows[i]} has tag {flat[i].as_py()!r}, not in manifest tags")
    matrix = torch.zeros(len(item_ids) + 1, len(tag_names), dtype=torch.bool)
    matrix[torch.from_numpy(rows), torch.from_numpy(codes.astype(np.int64))] = True
    return matrix


# What training keeps of the item table (the tag matrix is always built); titles and texts are for
# evaluation and serving.
TRAINING_ITEM_COLUMNS = ("item_id",)


def load_prepared(root: str | Path, item_columns: tuple[str, ...] | None = None) -> Prepared:
    """The prepared tables; ``item_columns`` keeps only those columns of the item table in
    ``Prepared.items`` (training passes TRAINING_ITEM_COLUMNS: a 20M-item catalogue's titles, texts
    and tag lists need not be in memory; the tag matrix is built either way)."""
    root = Path(root)
    manifest = read_manifest(root)
    items_path = _require(root / schema.ITEMS_NAME, "item table")
    prompts_path = _require(root / schema.PROMPTS_NAME, "prompt table")
    emb_path = _require(root / schema.PROMPT_EMB_NAME, "prompt embeddings")
    table = pq.read_table(items_path, columns=None if item_columns is None else sorted({*item_columns, "item_id", "tags"}))
    table = table.take(pc.sort_indices(table["item_id"]))
    item_ids = table["item_id"].to_numpy()
    # Ids first: the tag matrix indexes rows by id.
    _check_ids(pd.DataFrame({"item_id": item_ids}), "item_id", 1, items_path)
    item_tag = item_tag_matrix(item_ids, table["tags"], list(manifest["tags"]), items_path)
    if item_columns is not None:
        table = table.select(list(item_columns))
    items = table.to_pandas()
    prompts = pd.read_parquet(prompts_path).sort_values("prompt_id", kind="stable").reset_index(drop=True)
    _check_ids(prompts, "prompt_id", 0, prompts_path)
    embeddings = np.load(emb_path, allow_pickle=False)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(prompts):
        raise PreparedDataError(
            f"{emb_path}: shape {embeddings.shape}, expected [{len(prompts)}, D] (one row per prompt)"
        )
    tag_names = list(manifest["tags"])
    return Prepared(
        root=root,
        manifest=manifest,
        items=items,
        prompts=prompts,
        prompt_embeddings=torch.from_numpy(embeddings.astype(np.float32, copy=False)),
        item_tag=item_tag,
        tag_names=tag_names,
    )
