"""Full-ranking metrics: the judge. Shares no code with training on purpose, so a bug in the model
code cannot make its own evaluation look good.

Conventions (every function here follows them):

- ``scores`` is ``[B, N+1]`` (torch or numpy); column ``i`` scores item id ``i``; column 0 is padding.
- ``exclude`` is a bool ``[B, N+1]`` mask of items that take no part in the ranking (the user's
  history and the padding column 0). Build it with :func:`exclusion_mask`.
- **Tie rule (pessimistic)**: the rank of the target is
  ``1 + #(other non-excluded items with score > target score) + #(other non-excluded items with
  score == target score)``. A model that gives every item the same score therefore ranks the target
  last, not first: constant or saturated scores cannot earn credit.
- **Top-K order**: score descending, ties broken by the lower item id; excluded items never enter.
- Recall@K equals HR@K here (one target per case, leave-one-out);
  NDCG@K = 1 / log2(rank + 1) if rank <= K else 0 (the ideal DCG is 1).
- violation@K = share of the top-K items carrying the case's suppressed tag (NaN for a case with no
  suppressed tag, tag id -1). If fewer than K items are rankable the share is over those present.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)


def as_tensor(x) -> torch.Tensor:
    """Torch view of a torch tensor or numpy array (no copy when possible)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def exclusion_mask(history, num_columns: int, targets=None) -> torch.Tensor:
    """Bool ``[B, num_columns]``: True for column 0 and every item of the (padded) history.

    ``history`` is ``[B, L]`` item ids with 0 as padding. If ``targets`` is given its column is
    kept rankable even when the target also occurs in the history (repeat consumption): masking it
    would make the case unrankable rather than hard.
    """
    hist = as_tensor(history).long()
    if hist.numel() and (hist.min() < 0 or hist.max() >= num_columns):
        raise ValueError(f"history ids must lie in [0, {num_columns}); got [{hist.min()}, {hist.max()}]")
    mask = torch.zeros(hist.shape[0], num_columns, dtype=torch.bool)
    mask.scatter_(1, hist, True)
    mask[:, 0] = True
    if targets is not None:
        rows = torch.arange(hist.shape[0])
        mask[rows, as_tensor(targets).long()] = False
    return mask


def target_ranks(scores, targets, exclude) -> torch.Tensor:
    """1-based pessimistic rank of each target among its non-excluded items: LongTensor ``[B]``."""
    s = as_tensor(scores)
    t = as_tensor(targets).long()
    ex = as_tensor(exclude).bool()
    _check_shapes(s, t, ex)
    rows = torch.arange(s.shape[0])
    if ((t <= 0) | (t >= s.shape[1])).any():
        bad = int(torch.nonzero((t <= 0) | (t >= s.shape[1]))[0, 0])
        raise ValueError(f"row {bad}: target {int(t[bad])} is not an item id in [1, {s.shape[1] - 1}]")
    if ex[rows, t].any():
        bad = int(torch.nonzero(ex[rows, t])[0, 0])
        raise ValueError(f"row {bad}: target item {int(t[bad])} is excluded, so it cannot be ranked")
    nan = torch.isnan(s) & ~ex
    if nan.any():
        # A NaN compares False with everything and would silently rank as "below the target".
        bad_row, bad_item = (int(v) for v in torch.nonzero(nan)[0])
        raise ValueError(f"row {bad_row}: the score of item {bad_item} is NaN")
    target_score = s[rows, t].unsqueeze(1)
    beats_or_ties = (s >= target_score) & ~ex
    # The target itself satisfies ">=": it is the "1 +" of the rank.
    return beats_or_ties.sum(dim=1)


def recall_at_k(ranks, k: int) -> torch.Tensor:
    """Per-case hit indicator (float ``[B]``): 1 if the target is within the top K."""
    return (as_tensor(ranks) <= k).double()


def ndcg_at_k(ranks, k: int) -> torch.Tensor:
    """Per-case NDCG@K with one relevant item (float ``[B]``)."""
    r = as_tensor(ranks).double()
    return torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))


def top_k_items(scores, exclude, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item ids of the top K per row (score desc, lower id first on ties, excluded items skipped).

    Returns ``(ids [B, k], present [B, k])``; ``present`` is False where a row has fewer than k
    rankable items (those ids are -1).
    """
    s = as_tensor(scores)
    ex = as_tensor(exclude).bool()
    # A stable descending sort keeps equal scores in column (= item id) order.
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    keep = ~torch.gather(ex, 1, order)
    # Position of each kept item among the kept ones; take the first k.
    slot = torch.cumsum(keep.long(), dim=1) - 1
    chosen = keep & (slot < k)
    ids = torch.full((s.shape[0], k), -1, dtype=torch.long)
    row_idx, col_idx = torch.nonzero(chosen, as_tuple=True)
    ids[row_idx, slot[row_idx, col_idx]] = order[row_idx, col_idx]
    return ids, ids >= 0


def violation_at_k(scores, exclude, item_tag, suppressed_tags, k: int) -> torch.Tensor:
    """Per-case share of the top K carrying the suppressed tag (float ``[B]``, NaN if tag is -1).

    ``item_tag`` is bool ``[N+1, T]``; ``suppressed_tags`` is ``[B]`` tag ids (-1 = none).
    """
    tags = as_tensor(suppressed_tags).long()
    item_tag = as_tensor(item_tag).bool()
    ids, present = top_k_items(scores, exclude, k)
    carries = item_tag[ids.clamp(min=0), tags.clamp(min=0).unsqueeze(1)] & present
    share = carries.sum(1).double() / present.sum(1).clamp(min=1).double()
    return torch.where(tags >= 0, share, torch.full_like(share, float("nan")))


def case_metrics(
    scores,
    targets,
    exclude,
    ks: Iterable[int] = DEFAULT_KS,
    item_tag=None,
    suppressed_tags=None,
) -> dict[str, np.ndarray]:
    """Per-case metrics ``{"recall@K", "ndcg@K", ["violation@K"], "rank"}`` as float64 arrays ``[B]``.

    Per-case values (rather than means) let the report cut any subset (shift, held-out, per tag).
    ``violation@K`` is computed when ``item_tag`` and ``suppressed_tags`` are given.
    """
    ranks = target_ranks(scores, targets, exclude)
    out: dict[str, np.ndarray] = {"rank": ranks.double().numpy()}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k).numpy()
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k).numpy()
        if item_tag is not None and suppressed_tags is not None:
            out[f"violation@{k}"] = violation_at_k(scores, exclude, item_tag, suppressed_tags, k).numpy()
    return out


def mean_metrics(per_case: dict[str, np.ndarray], select=None) -> dict[str, float]:
    """Means of per-case metrics over the selected cases (bool ``[B]``); NaNs (no tag) are skipped.

    The mean rank is left out: it is dominated by the catalogue size and says little.
    """
    out = {}
    for name, values in per_case.items():
        if name == "rank":
            continue
        v = values if select is None else values[np.asarray(select, dtype=bool)]
        v = v[~np.isnan(v)]
        out[name] = float(v.mean()) if v.size else float("nan")
    return out


def concat_case_metrics(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-batch outputs of :func:`case_metrics` into one per-case table."""
    if not parts:
        return {}
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _check_shapes(s: torch.Tensor, t: torch.Tensor, ex: torch.Tensor) -> None:
    if s.dim() != 2:
        raise ValueError(f"scores must be [B, N+1]; got shape {tuple(s.shape)}")
    if t.shape != (s.shape[0],):
        raise ValueError(f"targets must be [{s.shape[0]}]; got shape {tuple(t.shape)}")
    if ex.shape != s.shape:
        raise ValueError(f"exclude must match scores {tuple(s.shape)}; got {tuple(ex.shape)}")
