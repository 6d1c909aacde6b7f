"""Exact full-catalogue ranking in item chunks: memory O(B * (chunk + k)) instead of O(B * N).

For catalogues far too large for a ``[B, N+1]`` score matrix (10M items). Results are identical to
ranking the full matrix with the rules of :mod:`dpr_dist.eval.metrics` (pessimistic target rank;
top-K by score descending, lower item id first on ties; excluded items never ranked).

``items`` rows are item embeddings for ids ``first_id, first_id + 1, ...`` so one shard of a
row-wise sharded table can be ranked on its own and the per-shard top-Ks merged with
:func:`merge_top_k`. Item id 0 (padding) is always excluded.
"""

from __future__ import annotations

import torch


def _chunk_exclusion(history: torch.Tensor, lo: int, width: int) -> torch.Tensor:
    """Bool ``[B, width]``: True where item ``lo + j`` is in the row's history or is id 0."""
    local = history - lo
    inside = (local >= 0) & (local < width)
    mask = torch.zeros(history.shape[0], width + 1, dtype=torch.bool)
    # Out-of-chunk ids are sent to the spare last column, then dropped.
    mask.scatter_(1, torch.where(inside, local, torch.full_like(local, width)), True)
    mask = mask[:, :width]
    if lo <= 0 < lo + width:
        mask[:, -lo] = True
    return mask


def _order_candidates(
    scores: torch.Tensor, ids: torch.Tensor, dropped: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the best k of the candidates, which must be given in ascending id order on ties.

    Two stable sorts: by score descending, then by "dropped" (rankable first); stability keeps
    the lower id first among equal scores.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    order = torch.gather(order, 1, torch.sort(torch.gather(dropped, 1, order).to(torch.uint8), dim=1, stable=True).indices)
    order = order[:, :k]
    return torch.gather(scores, 1, order), torch.gather(ids, 1, order), torch.gather(dropped, 1, order)


@torch.no_grad()
def chunked_top_k(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    history: torch.Tensor | None = None,
    chunk_size: int = 65_536,
    first_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``queries @ items.T`` per row, excluding each row's ``history`` ids and id 0.

    Returns ``(scores [B, k], ids [B, k])``; slots beyond the rankable items have id -1 and
    score -inf.
    """
    batch = queries.shape[0]
    hist = torch.zeros(batch, 0, dtype=torch.long) if history is None else history.long()
    best_s = torch.empty(batch, 0, dtype=queries.dtype)
    best_id = torch.empty(batch, 0, dtype=torch.long)
    best_drop = torch.empty(batch, 0, dtype=torch.bool)
    for start, s in _chunk_scores(queries, items, chunk_size):
        lo = first_id + start
        cand_s, cand_id, cand_drop = _chunk_candidates(s, _chunk_exclusion(hist, lo, s.shape[1]), lo, k)
        # Earlier chunks hold lower ids, so "running best, then this chunk" is ascending on ties.
        best_s, best_id, best_drop = _order_candidates(
            torch.cat([best_s, cand_s], 1), torch.cat([best_id, cand_id], 1), torch.cat([best_drop, cand_drop], 1), k
        )
    return _pad_missing(best_s, best_id, best_drop, k)


def _chunk_candidates(
    s: torch.Tensor, drop: torch.Tensor, lo: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rankable item scoring at least the row's k-th best, in ascending id order.

    ``torch.topk`` alone picks arbitrarily among items tied at the k-th score; keeping all of the
    tied ones (usually none or a few extra) lets the exact tie rule decide, without sorting the
    whole chunk.
    """
    masked = s.masked_fill(drop, float("-inf"))
    kth = torch.topk(masked, min(k, s.shape[1]), dim=1).values[:, -1:]
    cand = (masked >= kth) & ~drop
    slot = torch.cumsum(cand.long(), dim=1) - 1
    width = int(cand.sum(1).max()) if cand.numel() else 0
    out_s = torch.full((s.shape[0], width), float("-inf"), dtype=s.dtype)
    out_id = torch.full((s.shape[0], width), -1, dtype=torch.long)
    rows, cols = torch.nonzero(cand, as_tuple=True)
    out_s[rows, slot[rows, cols]] = s[rows, cols]
    out_id[rows, slot[rows, cols]] = cols + lo
    return out_s, out_id, out_id < 0


def merge_top_k(
    parts: list[tuple[torch.Tensor, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-shard ``(scores, ids)`` top-k lists into the global top-k (same tie rule)."""
    scores = torch.cat([p[0] for p in parts], 1)
    ids = torch.cat([p[1] for p in parts], 1)
    dropped = ids < 0
    # Sort candidates by id first so that the stable score sort breaks ties by lower id.
    by_id = torch.sort(torch.where(dropped, torch.iinfo(torch.long).max, ids), dim=1, stable=True).indices
    s, i, d = _order_candidates(
        torch.gather(scores, 1, by_id), torch.gather(ids, 1, by_id), torch.gather(dropped, 1, by_id), k
    )
    return _pad_missing(s, i, d, k)


def _pad_missing(s, ids, dropped, k):
    s = torch.where(dropped, torch.full_like(s, float("-inf")), s)
    ids = torch.where(dropped, torch.full_like(ids, -1), ids)
    if s.shape[1] < k:  # fewer candidates than k in total
        pad = k - s.shape[1]
        s = torch.cat([s, torch.full((s.shape[0], pad), float("-inf"), dtype=s.dtype)], 1)
        ids = torch.cat([ids, torch.full((ids.shape[0], pad), -1, dtype=torch.long)], 1)
    return s, ids


@torch.no_grad()
def chunked_target_ranks(
    queries: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    history: torch.Tensor | None = None,
    chunk_size: int = 65_536,
) -> torch.Tensor:
    """Pessimistic 1-based rank of each target (ids index ``items`` rows directly, row 0 = padding).

    The target stays rankable even if it is in the history, as in
    :func:`dpr_dist.eval.metrics.exclusion_mask` with targets.

    Two passes over the items: the target's score is taken from the very matmul call that scores
    its competitors, because a separately computed dot product can differ in the last bit and
    would turn exact ties into wins or losses.
    """
    targets = targets.long()
    batch = queries.shape[0]
    hist = torch.zeros(batch, 0, dtype=torch.long) if history is None else history.long()
    rows = torch.arange(batch)
    target_score = torch.full((batch, 1), float("nan"), dtype=queries.dtype)
    for start, s in _chunk_scores(queries, items, chunk_size):
        local = targets - start
        here = (local >= 0) & (local < s.shape[1])
        target_score[here, 0] = s[rows[here], local[here]]
    if torch.isnan(target_score).any():
        bad = int(torch.nonzero(torch.isnan(target_score[:, 0]))[0, 0])
        raise ValueError(f"row {bad}: target {int(targets[bad])} is outside items[0:{items.shape[0]}] or its score is NaN")
    ranks = torch.zeros(batch, dtype=torch.long)
    for start, s in _chunk_scores(queries, items, chunk_size):
        drop = _chunk_exclusion(hist, start, s.shape[1])
        local = targets - start
        here = (local >= 0) & (local < s.shape[1])
        drop[rows[here], local[here]] = False
        ranks += ((s >= target_score) & ~drop).sum(1)
    return ranks


def _chunk_scores(queries: torch.Tensor, items: torch.Tensor, chunk_size: int):
    for start in range(0, items.shape[0], chunk_size):
        yield start, queries @ items[start:start + chunk_size].T
