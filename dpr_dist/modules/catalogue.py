"""Catalogue-wide computations on one block of item rows, the pieces both item tables are built from.

A *block* is a contiguous range of item ids ``[row_start, row_start + n)`` with its embedding rows
``[n, d]``: the whole plain table, or one shard of a sharded table. Per block this module computes

- log-sum-exp of the scores ``q . e_i`` over the block (optionally split into the items that carry a
  row's tag and those that do not), as an autograd function that keeps the chunks' scores for
  backward while they fit (KEEP_SCORES_LIMIT) and beyond that re-scores chunk by chunk, so memory
  stays O(queries x chunk) whatever the catalogue size. Blocks combine
  with ``logaddexp``; that is how a sharded table gets a full softmax without gathering its rows;
- the score of each query's target, and the number of non-excluded items scoring at least that
  much (the pessimistic rank); blocks combine by max and by sum;
- the top-k, with exclusions; blocks combine with :func:`merge_topk`.

Item id 0 is padding everywhere: never a candidate, never part of a softmax.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from dpr_dist.common.schema import PAD_ID

CHUNK_ROWS = 65_536       # rows scored at once: bounds the [queries, chunk] score block
KEEP_SCORES_LIMIT = 1 << 28  # score elements (1 GiB of float32) kept for backward instead of re-scored
NO_ID = -1                # id of a filler top-k entry (fewer than k candidates); its value is -inf
NEG_INF = float("-inf")

# Rows of catalogue_logsumexp's output.
ALL, TAGGED, UNTAGGED = 0, 1, 2

ExcludeFn = Callable[[Tensor, int], Tensor]


# ---- log-sum-exp over a block ---------------------------------------------------------------------
def _chunk_scores(queries: Tensor, rows: Tensor, row_start: int) -> Tensor:
    """queries @ rows.T with the padding item's column at -inf (it is never part of a softmax)."""
    scores = queries @ rows.T
    if row_start <= PAD_ID < row_start + rows.shape[0]:
        scores[:, PAD_ID - row_start] = NEG_INF
    return scores


def _tag_masks(block_tags: Tensor, tag_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Bool [G, n]: the items carrying each query's tag, and the others (-1 = no tag: all others)."""
    tagged = block_tags[:, tag_ids.clamp(min=0)].T & (tag_ids >= 0).unsqueeze(1)
    return tagged, ~tagged


class _BlockLogSumExp(torch.autograd.Function):
    """Rows of the output: ALL (every real item), and with tags TAGGED / UNTAGGED. The padding
    column is -inf in the scores themselves, so it drops out of every sum and every gradient.

    Without tags (the warm-up's next-item loss: tens of thousands of queries per step) every pass
    over the [queries, chunk] score block works in place: each new block of that size is a fresh
    allocation whose page faults cost as much as the arithmetic (BENCHMARKS.md, "Training
    throughput"). The chunk keeps exp(s - m) with its row max m, and backward turns it into the
    softmax gradient in place, so this backward runs once (a second one fails the saved-tensor
    version check). With tags the raw scores are kept: each tag's log-sum-exp takes its own max, so
    a suppressed tag's tiny mass does not underflow."""

    @staticmethod
    def forward(ctx, queries, rows, row_start, block_tags, tag_ids, chunk_rows):
        n = rows.shape[0]
        out = queries.new_full((1 if tag_ids is None else 3, queries.shape[0]), NEG_INF)
        keep = queries.shape[0] * n <= KEEP_SCORES_LIMIT  # small: keep the scores, skip re-scoring
        kept, shifts = [], []
        for lo in range(0, n, chunk_rows):
            hi = min(lo + chunk_rows, n)
            scores = _chunk_scores(queries, rows[lo:hi], row_start + lo)
            if tag_ids is None:
                shift = _finite_or_zero(scores.amax(dim=1))
                exp_scores = scores.sub_(shift.unsqueeze(1)).exp_()
                out[ALL] = torch.logaddexp(out[ALL], exp_scores.sum(dim=1).log_() + shift)
                shifts.append(shift)
            else:
                out[ALL] = torch.logaddexp(out[ALL], scores.logsumexp(dim=1))
                for k, mask in zip((TAGGED, UNTAGGED), _tag_masks(block_tags[lo:hi], tag_ids)):
                    out[k] = torch.logaddexp(out[k], scores.masked_fill(~mask, NEG_INF).logsumexp(dim=1))
            if keep:
                kept.append(scores)
        ctx.save_for_backward(queries, rows, out, *kept)
        ctx.meta = (row_start, block_tags, tag_ids, chunk_rows, keep, shifts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        queries, rows, out, *kept = ctx.saved_tensors
        row_start, block_tags, tag_ids, chunk_rows, keep, shifts = ctx.meta
        want_q, want_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.zeros_like(queries) if want_q else None
        grad_rows = torch.zeros_like(rows) if want_rows else None
        # d lse_k / d s_ij = softmax_k(s)_ij on the items lse_k sums over, 0 elsewhere.
        # (an empty block, only the padding row, has lse -inf: shift by 0 instead, exp(-inf) = 0)
        lse_all = _finite_or_zero(out[ALL])
        for index, lo in enumerate(range(0, rows.shape[0], chunk_rows)):
            hi = min(lo + chunk_rows, rows.shape[0])
            block = rows[lo:hi]
            if tag_ids is None and keep:  # kept exp(s - m): softmax = that * exp(m - lse)
                coef = kept[index].mul_((grad_out[ALL] * torch.exp(shifts[index] - lse_all)).unsqueeze(1))
            elif tag_ids is None:
                scores = _chunk_scores(queries, block, row_start + lo)
                coef = scores.sub_(lse_all.unsqueeze(1)).exp_().mul_(grad_out[ALL].unsqueeze(1))
            else:
                scores = kept[index] if keep else _chunk_scores(queries, block, row_start + lo)
                coef = torch.exp(scores - lse_all.unsqueeze(1)).mul_(grad_out[ALL].unsqueeze(1))
                for k, mask in zip((TAGGED, UNTAGGED), _tag_masks(block_tags[lo:hi], tag_ids)):
                    # where(), not a product: exp(s - (-inf)) of an empty set is inf.
                    prob = torch.where(mask, torch.exp(scores - out[k].unsqueeze(1)), 0.0)
                    coef += grad_out[k].unsqueeze(1) * prob
            if want_q:
                grad_q += coef @ block
            if want_rows:
                grad_rows[lo:hi] += coef.T @ queries
        return grad_q, grad_rows, None, None, None, None


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def block_logsumexp(
    queries: Tensor, rows: Tensor, row_start: int, block_tags: Tensor | None = None,
    tag_ids: Tensor | None = None, chunk_rows: int = CHUNK_ROWS,
) -> Tensor:
    """log-sum-exp of ``queries @ rows.T`` over the block's real items: ``[1, G]``, or with
    ``tag_ids`` [G] (-1 = none) and ``block_tags`` (bool [n, T], the block's item-tag rows) ``[3, G]``
    = (all, tagged with the row's tag, untagged). An empty set gives -inf. Differentiable in
    ``queries`` and (unless detached) ``rows``."""
    return _BlockLogSumExp.apply(queries, rows, row_start, block_tags, tag_ids, chunk_rows)


def stack_logsumexp(parts: list[Tensor]) -> Tensor:
    """log-sum-exp across blocks (or ranks) of per-block log-sum-exps, elementwise. An entry that
    is -inf in every part stays -inf with a ZERO gradient (torch.logsumexp's would be NaN)."""
    if len(parts) == 1:
        return parts[0]
    x = torch.stack(parts)
    peak = _finite_or_zero(x.detach().amax(dim=0))
    total = torch.exp(x - peak).sum(dim=0)
    present = total > 0
    safe = torch.where(present, total, torch.ones_like(total))
    return torch.where(present, safe.log() + peak, torch.full_like(total, NEG_INF))


# ---- ranks -----------------------------------------------------------------------------------------
def chunk_target_scores(scores: Tensor, row_start: int, targets: Tensor) -> Tensor:
    """[G] score of each target inside this chunk of ids [row_start, row_start + c), -inf for the
    others. Taken from the chunk's own matmul, which :func:`chunk_rank_counts` sees again, so exact
    ties stay exact ties (a separately computed dot product can differ in the last bit)."""
    local = targets - row_start
    here = (local >= 0) & (local < scores.shape[1])
    picked = scores.gather(1, local.clamp(0, scores.shape[1] - 1).unsqueeze(1)).squeeze(1)
    return torch.where(here, picked, torch.full_like(picked, NEG_INF))


def chunk_rank_counts(scores: Tensor, row_start: int, target_scores: Tensor, targets: Tensor, history: Tensor) -> Tensor:
    """[G] number of the chunk's rankable items scoring >= the target's score (history and padding
    excluded, the target itself counted: summed over the catalogue it is the 1-based pessimistic rank)."""
    exclude = exclude_ids(history.masked_fill(history == targets.unsqueeze(1), PAD_ID))
    scores = exclude(_mask_padding(scores, row_start), row_start)
    return (scores >= target_scores.unsqueeze(1)).sum(1)


# ---- top-k -----------------------------------------------------------------------------------------
def exclude_ids(ids: Tensor) -> ExcludeFn:
    """Exclusion function: per query row b, the item ids ids[b, :] (e.g. the history; 0 ignored).

    It receives a block of scores [B, n] covering ids [row_start, row_start + n) and returns it with
    the excluded entries at -inf, by index arithmetic rather than a [B, L, n] comparison."""
    ids = ids.reshape(ids.shape[0], -1)

    def apply(scores: Tensor, row_start: int) -> Tensor:
        on_device = ids.to(scores.device)
        local = on_device - row_start
        inside = (on_device != PAD_ID) & (local >= 0) & (local < scores.shape[1])
        rows = torch.arange(ids.shape[0], device=scores.device).unsqueeze(1).expand_as(local)
        minus_inf = torch.tensor(NEG_INF, dtype=scores.dtype, device=scores.device)
        return scores.index_put((rows[inside], local[inside]), minus_inf)

    return apply


def _mask_padding(scores: Tensor, row_start: int) -> Tensor:
    if row_start <= PAD_ID < row_start + scores.shape[1]:
        scores = scores.index_fill(1, torch.tensor([PAD_ID - row_start], device=scores.device), NEG_INF)
    return scores


def block_topk(scores: Tensor, row_start: int, k: int, exclude_fn: ExcludeFn | None) -> tuple[Tensor, Tensor]:
    """Top-k (values, global ids) of one block's scores, padded with (-inf, NO_ID) to k columns."""
    scores = _mask_padding(scores, row_start)
    if exclude_fn is not None:
        scores = exclude_fn(scores, row_start)
    values, local = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    ids = (local + row_start).masked_fill(values == NEG_INF, NO_ID)
    return _pad(values, ids, k)


def merge_topk(values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """values/ids [B, m] candidates -> the best k of them."""
    best, where = torch.topk(values, min(k, values.shape[1]), dim=1)
    return _pad(best, ids.gather(1, where), k)


def empty_topk(batch: int, k: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    values = torch.full((batch, k), NEG_INF, dtype=dtype, device=device)
    return values, torch.full((batch, k), NO_ID, dtype=torch.long, device=device)


def _pad(values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    missing = k - values.shape[1]
    if missing <= 0:
        return values, ids
    fill_v, fill_i = empty_topk(values.shape[0], missing, values.dtype, values.device)
    return torch.cat([values, fill_v], 1), torch.cat([ids, fill_i], 1)
