"""Item-table initialisation that any rank can compute for its own rows only.

A sharded table must not build the full [N+1, d] matrix to initialise itself, yet a 2-rank run and
a 1-rank run (and the single-process PlainItemTable path) must start from the same weights. So the
table is drawn in fixed blocks of rows, each from its own generator seeded by (seed, block): a rank
draws just the blocks that overlap its shard, whatever the sharding type or world size.

Distribution: Xavier-normal over the full table shape, as PlainItemTable (std = sqrt(2 / (rows + d))),
with the padding row 0 zero.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from dpr_dist.common.schema import PAD_ID

BLOCK_ROWS = 65_536


def _block_generator(seed: int, block: int) -> torch.Generator:
    # torch's CPU generator keeps only 32 bits of the seed, so (seed, block) is hashed into 32 bits
    # rather than packed into 64 (which would give every seed the same blocks).
    digest = hashlib.sha256(f"dpr-item-table:{seed}:{block}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))


def xavier_std(num_rows: int, dim: int) -> float:
    return math.sqrt(2.0 / (num_rows + dim))


def initial_rows(row_start: int, row_end: int, num_rows: int, dim: int, seed: int) -> Tensor:
    """Rows [row_start, row_end) of the seeded initial table of shape [num_rows, dim] (float32)."""
    if not 0 <= row_start <= row_end <= num_rows:
        raise ValueError(f"row range [{row_start}, {row_end}) is outside a table of {num_rows} rows")
    std = xavier_std(num_rows, dim)
    parts = []
    for block in range(row_start // BLOCK_ROWS, (row_end + BLOCK_ROWS - 1) // BLOCK_ROWS):
        block_start = block * BLOCK_ROWS
        block_rows = min(BLOCK_ROWS, num_rows - block_start)
        values = torch.randn(block_rows, dim, generator=_block_generator(seed, block)) * std
        lo, hi = max(row_start, block_start) - block_start, min(row_end, block_start + block_rows) - block_start
        parts.append(values[lo:hi])
    out = torch.cat(parts) if parts else torch.empty(0, dim)
    if row_start <= PAD_ID < row_end:
        out[PAD_ID - row_start].zero_()
    return out


def initial_weight(num_rows: int, dim: int, seed: int) -> Tensor:
    """The whole seeded table: for the single-process path and for tests (small catalogues)."""
    return initial_rows(0, num_rows, num_rows, dim, seed)


def check_fixed_columns(fixed: Tensor | None, num_rows: int, dim: int) -> None:
    if fixed is None:
        return
    if fixed.dim() != 2 or fixed.shape[0] != num_rows or not 0 < fixed.shape[1] < dim:
        raise ValueError(f"fixed_columns must be [{num_rows}, k] with 0 < k < dim={dim}, got {tuple(fixed.shape)}")


def with_fixed_columns(rows: Tensor, fixed: Tensor) -> Tensor:
    """rows [n, d] with their last k columns replaced by ``fixed`` [n, k] (item features that are
    part of the embedding but never trained, e.g. genre indicators: ModelConfig.tag_features)."""
    rows = rows.clone()
    rows[:, rows.shape[1] - fixed.shape[1] :] = fixed.to(rows.dtype)
    return rows
