"""Baseline score functions. Each returns ``[B, N+1]`` scores for a batch of cases and takes the
backbone's "base" scores where it needs them, so any backbone checkpoint can be plugged in.

Rank the outputs with :mod:`dpr_dist.eval.metrics` (exclusion of history items happens there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import webdataset as wds

from dpr_dist.common import schema
from dpr_dist.eval import metrics

NEG_INF = float("-inf")


# --- popularity -------------------------------------------------------------------------------

COUNT_BATCH_IDS = 4_000_000


def popularity_counts(warmup_shards: Iterable[str | Path], num_items: int) -> np.ndarray:
    """Interaction counts per item id (int64 ``[N+1]``, index 0 stays 0) over training positions.

    Reads the train/warmup shards only: each warm-up sample's history is one user's whole training
    sequence, so validation and test targets are never counted.
    """
    counts = np.zeros(num_items + 1, dtype=np.int64)
    # Ids are gathered and counted a few million at a time: one [N+1] bincount per sample would
    # cost users x catalogue (minutes at 20M items).
    pending: list[np.ndarray] = []
    pending_size = 0
    urls = [str(p) for p in warmup_shards]
    for sample in wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False):
        hist, case = schema.decode_case(sample)
        if case[schema.FIELD_INDEX["target"]] != schema.NO_ID:
            raise ValueError(f"{sample.get('__url__', '?')}: sample {sample['__key__']!r} is not a warm-up sample (target set)")
        if hist.size and (hist.min() < 1 or hist.max() > num_items):
            raise ValueError(f"{sample.get('__url__', '?')}: sample {sample['__key__']!r} holds item ids outside [1, {num_items}]")
        pending.append(hist)
        pending_size += hist.size
        if pending_size >= COUNT_BATCH_IDS:
            _add_counts(counts, pending)
            pending, pending_size = [], 0
    _add_counts(counts, pending)
    return counts


def _add_counts(counts: np.ndarray, id_arrays: list[np.ndarray]) -> None:
    if id_arrays:
        counts += np.bincount(np.concatenate(id_arrays), minlength=counts.size)


def popularity_scores(counts, batch_size: int) -> torch.Tensor:
    """The same popularity ranking for every case: ``[B, N+1]`` float32 counts.

    Items with equal counts tie; the metrics' pessimistic tie rule then ranks a tied target last
    among its equals, so this baseline is not flattered by arbitrary tie order.
    """
    row = metrics.as_tensor(counts).to(torch.float32)
    return row.unsqueeze(0).expand(batch_size, -1)


# --- hard filter ------------------------------------------------------------------------------

def tag_allowed(item_tag, pos_tag, neg_tag) -> torch.Tensor:
    """Bool ``[B, N+1]``: the item carries the positive tag (if any) and lacks the negative one (if any)."""
    item_tag = metrics.as_tensor(item_tag).bool()
    pos = metrics.as_tensor(pos_tag).long()
    neg = metrics.as_tensor(neg_tag).long()
    by_tag = item_tag.T  # [T, N+1]
    ok = torch.ones(pos.shape[0], item_tag.shape[0], dtype=torch.bool)
    ok &= torch.where((pos >= 0).unsqueeze(1), by_tag[pos.clamp(min=0)], True)
    ok &= torch.where((neg >= 0).unsqueeze(1), ~by_tag[neg.clamp(min=0)], True)
    return ok


def hard_filter(base_scores, item_tag, pos_tag, neg_tag) -> torch.Tensor:
    """Base scores with -inf on items lacking the positive tag / carrying the negative tag.

    Rows with neither tag (standard cases) are returned unchanged; combined cases apply both.
    """
    base = metrics.as_tensor(base_scores)
    return torch.where(tag_allowed(item_tag, pos_tag, neg_tag), base, torch.tensor(NEG_INF, dtype=base.dtype))


# --- text rerank ------------------------------------------------------------------------------

def tag_item_similarity(item_text_emb, tag_text_emb, tags) -> torch.Tensor:
    """Cosine ``[B, N+1]`` between each case's tag text and every item's text (0 where tag is -1)."""
    items = torch.nn.functional.normalize(metrics.as_tensor(item_text_emb).float(), dim=1)
    tag_vecs = torch.nn.functional.normalize(metrics.as_tensor(tag_text_emb).float(), dim=1)
    tags = metrics.as_tensor(tags).long()
    cos = tag_vecs[tags.clamp(min=0)] @ items.T
    return torch.where((tags >= 0).unsqueeze(1), cos, torch.zeros_like(cos))


def text_rerank(
    base_scores,
    exclude,
    item_text_emb,
    tag_text_emb,
    pos_tag,
    neg_tag,
    top_n: int,
    weight: float,
) -> torch.Tensor:
    """Rerank the backbone's top-N by ``base + w * cos(pos tag, item) - w * cos(neg tag, item)``.

    The top-N is taken among non-excluded items. Every other item is pushed strictly below the
    lowest reranked score while keeping its backbone order, so the ceiling of Recall@K is the
    backbone's Recall@N. The negative term embeds the excluded tag itself ("no horror" would embed
    close to horror).
    """
    base = metrics.as_tensor(base_scores).float()
    exclude = metrics.as_tensor(exclude).bool()
    adjust = tag_item_similarity(item_text_emb, tag_text_emb, pos_tag) - tag_item_similarity(item_text_emb, tag_text_emb, neg_tag)
    ranked = metrics.top_k_items(base, exclude, top_n)[0]
    in_top = torch.zeros_like(exclude)
    in_top.scatter_(1, ranked.clamp(min=0), ranked >= 0)
    in_top[:, 0] = (ranked == 0).any(1)  # the clamp above sent missing slots (-1) to column 0
    reranked = base + weight * adjust
    floor = torch.where(in_top, reranked, torch.tensor(float("inf"))).amin(1, keepdim=True)
    outside = ~in_top & ~exclude & torch.isfinite(base)
    top_outside = torch.where(outside, base, torch.tensor(NEG_INF)).amax(1, keepdim=True)
    # floor - 1 - (gap to the best outside item): below every reranked item, backbone order kept.
    pushed = floor - 1.0 - (top_outside - base)
    return torch.where(in_top, reranked, torch.where(outside, pushed, torch.where(exclude, base, NEG_INF)))


def tune_rerank_weight(
    base_scores,
    exclude,
    targets,
    item_text_emb,
    tag_text_emb,
    pos_tag,
    neg_tag,
    top_n: int,
    grid: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
    metric: str = "ndcg@10",
) -> tuple[float, dict[float, float]]:
    """Pick the rerank weight on *validation* cases: the grid value with the best mean ``metric``.

    Ties go to the earlier grid value. Returns ``(best weight, {weight: metric value})``.
    The grid spans several decades because backbone logits have no fixed scale.
    """
    k = int(metric.split("@")[1])
    results: dict[float, float] = {}
    for w in grid:
        scores = text_rerank(base_scores, exclude, item_text_emb, tag_text_emb, pos_tag, neg_tag, top_n, w)
        per_case = metrics.case_metrics(scores, targets, exclude, ks=(k,))
        results[float(w)] = float(np.mean(per_case[metric]))
    best = max(results, key=lambda w: (results[w], -list(results).index(w)))
    return best, results
