"""Top-K over a catalogue scored in row blocks (a rank's shard, or a chunk of it), then merged.

An exclusion function receives a block of scores [B, n] covering item ids
[row_start, row_start + n) and returns it with excluded entries set to -inf; blocks are contiguous
row ranges, so exclusions are written by index arithmetic instead of a [B, L, n] comparison.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dpr_dist.modules.item_table import PAD_ID

ExcludeFn = Callable[[Tensor, int], Tensor]
NO_ID = -1  # id of a filler entry (a rank with fewer than k candidates); its value is -inf


def exclude_ids(ids: Tensor) -> ExcludeFn:
    """Exclude, per query row b, the item ids ids[b, :] (e.g. the history; 0 = padding, ignored)."""
    ids = ids.reshape(ids.shape[0], -1)

    def apply(scores: Tensor, row_start: int) -> Tensor:
        on_device = ids.to(scores.device)
        local = on_device - row_start
        inside = (on_device != PAD_ID) & (local >= 0) & (local < scores.shape[1])
        rows = torch.arange(ids.shape[0], device=scores.device).unsqueeze(1).expand_as(local)
        minus_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
        return scores.index_put((rows[inside], local[inside]), minus_inf)

    return apply


def block_topk(scores: Tensor, row_start: int, k: int, exclude_fn: ExcludeFn | None) -> tuple[Tensor, Tensor]:
    """Top-k (values, global ids) of one block, padded with (-inf, NO_ID) to exactly k columns."""
    if row_start <= PAD_ID < row_start + scores.shape[1]:
        scores = scores.index_fill(1, torch.tensor([PAD_ID - row_start], device=scores.device), float("-inf"))
    if exclude_fn is not None:
        scores = exclude_fn(scores, row_start)
    take = min(k, scores.shape[1])
    values, local = torch.topk(scores, take, dim=1)
    ids = local + row_start
    ids = ids.masked_fill(values == float("-inf"), NO_ID)
    return _pad(values, ids, k)


def merge_topk(values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """values/ids [B, m] candidates (m >= k after padding) -> the best k of them."""
    best, where = torch.topk(values, min(k, values.shape[1]), dim=1)
    return _pad(best, ids.gather(1, where), k)


def empty_topk(
    batch: int, k: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    values = torch.full((batch, k), float("-inf"), dtype=dtype, device=device)
    return values, torch.full((batch, k), NO_ID, dtype=torch.long, device=device)


def _pad(values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    missing = k - values.shape[1]
    if missing <= 0:
        return values, ids
    fill_v, fill_i = empty_topk(values.shape[0], missing, values.dtype, values.device)
    return torch.cat([values, fill_v], 1), torch.cat([ids, fill_i], 1)
