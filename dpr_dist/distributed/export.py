"""The consolidated export of a distributed model: ONE safetensors file, the same layout as the
single-process checkpoint (``item_table.embedding.weight`` plus every dense tensor), so evaluation
and serving read it unchanged.

The table is never materialised: rank 0 writes the file header, then receives the table in blocks
of rows (each rank fills in the part it holds, a ``reduce`` to rank 0 assembles the block) and
appends them, so rank 0 holds one block at a time. The safetensors layout (8-byte little-endian
header length, a JSON header of dtypes, shapes and byte offsets, then the raw little-endian data)
is simple enough to stream; ``safetensors.safe_open`` reads the result, including row slices, which
is how each rank loads just its shard back (:func:`load_table_rows`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import Tensor

from dpr_dist.common.atomic import atomic_path

TABLE_KEY = "item_table.embedding.weight"  # PlainItemTable's state_dict key
EXPORT_BLOCK_ROWS = 262_144
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16"}


def _header(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> bytes:
    entries, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        size = dtype.itemsize
        for dim in shape:
            size *= dim
        entries[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def export_model(dense: dict[str, Tensor], table, path: Path) -> Path | None:
    """Collective. ``dense``: the full dense tensors (the same on every rank); ``table``: a
    ShardedItemTable. Rank 0 writes ``path`` atomically and returns it; the others return None."""
    path = Path(path)
    main = dist.get_rank() == 0
    names = sorted(dense)
    shapes = {name: (tuple(dense[name].shape), dense[name].dtype) for name in names}
    shapes[TABLE_KEY] = ((table.num_rows, table.dim), torch.float32)
    ordered = sorted(shapes)  # one order for the header offsets and the data
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) if main else _nothing() as tmp:
        fh = open(tmp, "wb") if main else None
        try:
            if main:
                fh.write(_header({name: shapes[name] for name in ordered}))
            for name in ordered:
                if name == TABLE_KEY:
                    _stream_table(table, fh)
                elif main:
                    fh.write(dense[name].detach().to("cpu").contiguous().numpy().tobytes())
        finally:
            if fh is not None:
                fh.close()
    return path if main else None


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _stream_table(table, fh) -> None:
    for lo in range(0, table.num_rows, EXPORT_BLOCK_ROWS):
        hi = min(lo + EXPORT_BLOCK_ROWS, table.num_rows)
        block = torch.zeros(hi - lo, table.dim, device=table.device)
        for shard in table.local_shards():
            a, b = max(lo, shard.row_start), min(hi, shard.row_end)
            if a < b:
                block[a - lo : b - lo, shard.col_start : shard.col_end] = shard.tensor[a - shard.row_start : b - shard.row_start].detach()
        dist.reduce(block, dst=0)  # every element is held by exactly one rank, the others add zeros
        if fh is not None:
            fh.write(block.to("cpu").contiguous().numpy().tobytes())


def read_dense(path: Path, keys) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as f:
        missing = sorted(set(keys) - set(f.keys()))
        if missing:
            raise KeyError(f"{path}: no tensor(s) {missing[:5]}")
        return {k: f.get_tensor(k) for k in keys}


def load_table_rows(table, path: Path) -> None:
    """Each rank copies the rows (and columns) of its own shards from the export: no rank reads
    the whole table."""
    with safe_open(str(path), framework="pt") as f:
        if TABLE_KEY not in f.keys():
            raise KeyError(f"{path}: no {TABLE_KEY!r}: not a DPR checkpoint")
        rows = f.get_slice(TABLE_KEY)
        shape = tuple(rows.get_shape())
        if shape != (table.num_rows, table.dim):
            raise ValueError(f"{path}: {TABLE_KEY} has shape {shape}, the table ({table.num_rows}, {table.dim})")
        with torch.no_grad():
            for shard in table.local_shards():
                for lo in range(shard.row_start, shard.row_end, EXPORT_BLOCK_ROWS):
                    hi = min(lo + EXPORT_BLOCK_ROWS, shard.row_end)
                    part = rows[lo:hi, shard.col_start : shard.col_end]
                    shard.tensor[lo - shard.row_start : hi - shard.row_start] = part.to(shard.tensor.device)
