"""Metrics against hand-computed cases and against a brute-force implementation written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpr_dist.eval import metrics, ranking

# Items 1..5 (column 0 = padding). Tag 0 on items {1, 2, 4}; tag 1 on items {3, 5}.
ITEM_TAG = torch.tensor([
    [False, False],  # 0 padding
    [True, False],   # 1
    [True, False],   # 2
    [False, True],   # 3
    [True, False],   # 4
    [False, True],   # 5
])
SCORES = torch.tensor([
    # col: 0    1    2    3    4    5
    [9.0, 5.0, 0.9, 0.1, 0.9, 0.3],  # row 0: history [1], target 4
    [9.0, 5.0, 0.9, 0.1, 0.9, 0.3],  # row 1: history [2], target 3
])
HISTORY = torch.tensor([[0, 1], [2, 0]])
TARGETS = torch.tensor([4, 3])


def test_hand_computed_ranks_recall_ndcg():
    exclude = metrics.exclusion_mask(HISTORY, 6, TARGETS)
    # Row 0: rankable {2: .9, 3: .1, 4: .9 (target), 5: .3}; item 2 ties the target ->
    #   rank = 1 + 0 greater + 1 tie = 2 (column 0's 9.0 and history item 1's 5.0 do not count).
    # Row 1: rankable {1: 5.0, 3: .1 (target), 4: .9, 5: .3}; three greater -> rank = 1 + 3 = 4.
    ranks = metrics.target_ranks(SCORES, TARGETS, exclude)
    assert ranks.tolist() == [2, 4]
    out = metrics.case_metrics(SCORES, TARGETS, exclude, ks=(1, 3, 5))
    assert out["recall@1"].tolist() == [0.0, 0.0]
    assert out["recall@3"].tolist() == [1.0, 0.0]
    assert out["recall@5"].tolist() == [1.0, 1.0]
    # NDCG@K = 1/log2(rank + 1): rank 2 -> 1/log2(3) = 0.63093; rank 4 -> 1/log2(5) = 0.43068.
    assert out["ndcg@3"] == pytest.approx([0.6309297535714575, 0.0])
    assert out["ndcg@5"] == pytest.approx([0.6309297535714575, 0.43067655807339306])
    means = metrics.mean_metrics(out)
    assert means["ndcg@5"] == pytest.approx((0.6309297535714575 + 0.43067655807339306) / 2)
    assert "rank" not in means


def test_hand_computed_violation():
    exclude = metrics.exclusion_mask(HISTORY, 6, TARGETS)
    # Row 0 order: 2 (.9), 4 (.9; tie -> lower id first), 5 (.3), 3 (.1) -> top-3 = [2, 4, 5];
    #   suppressed tag 0 is on 2 and 4 -> 2/3.
    # Row 1 order: 1 (5.0), 4 (.9), 5 (.3), 3 (.1) -> top-3 = [1, 4, 5]; suppressed tag 1 on 5 -> 1/3.
    ids, present = metrics.top_k_items(SCORES, exclude, 3)
    assert ids.tolist() == [[2, 4, 5], [1, 4, 5]]
    assert present.all()
    v = metrics.violation_at_k(SCORES, exclude, ITEM_TAG, torch.tensor([0, 1]), 3)
    assert v.tolist() == pytest.approx([2 / 3, 1 / 3])
    # No suppressed tag -> NaN, skipped by mean_metrics.
    v = metrics.violation_at_k(SCORES, exclude, ITEM_TAG, torch.tensor([0, -1]), 3)
    assert v[0] == pytest.approx(2 / 3) and math.isnan(v[1])
    assert metrics.mean_metrics({"violation@3": v.numpy()})["violation@3"] == pytest.approx(2 / 3)


def test_constant_scores_rank_the_target_last():
    scores = torch.zeros(1, 6)
    exclude = metrics.exclusion_mask(torch.tensor([[1]]), 6, torch.tensor([3]))
    # Rankable items {2, 3, 4, 5}, all tied: rank = 1 + 3 ties = 4.
    assert metrics.target_ranks(scores, torch.tensor([3]), exclude).tolist() == [4]


def test_top_k_with_fewer_rankable_items_than_k():
    exclude = torch.tensor([[True, True, True, False, True, False]])  # only items 3 and 5 rankable
    ids, present = metrics.top_k_items(SCORES[:1], exclude, 3)
    assert ids.tolist() == [[5, 3, -1]] and present.tolist() == [[True, True, False]]
    # Violation over the 2 present items: tag 1 on both -> 2/2.
    assert metrics.violation_at_k(SCORES[:1], exclude, ITEM_TAG, torch.tensor([1]), 3).tolist() == [1.0]


def test_target_in_history_stays_rankable_and_errors_name_the_row():
    mask = metrics.exclusion_mask(torch.tensor([[4, 1]]), 6, torch.tensor([4]))
    assert mask.tolist() == [[True, True, False, False, False, False]]
    with pytest.raises(ValueError, match=r"row 1: target item 2 is excluded"):
        metrics.target_ranks(SCORES, torch.tensor([4, 2]), metrics.exclusion_mask(HISTORY, 6))
    with pytest.raises(ValueError, match=r"row 0: target 0 is not an item id in \[1, 5\]"):
        metrics.target_ranks(SCORES, torch.tensor([0, 3]), metrics.exclusion_mask(HISTORY, 6))
    bad = SCORES.clone()
    bad[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"row 1: the score of item 5 is NaN"):
        metrics.target_ranks(bad, TARGETS, metrics.exclusion_mask(HISTORY, 6, TARGETS))
    with pytest.raises(ValueError, match=r"history ids must lie in \[0, 6\)"):
        metrics.exclusion_mask(torch.tensor([[7]]), 6)


# --- brute force -----------------------------------------------------------------------------

def brute_rank(row: list[float], target: int, excluded: set[int]) -> int:
    rank = 1
    for item, score in enumerate(row):
        if item != target and item not in excluded and score >= row[target]:
            rank += 1
    return rank


def brute_top_k(row: list[float], excluded: set[int], k: int) -> list[int]:
    ranked = sorted((i for i in range(len(row)) if i not in excluded), key=lambda i: (-row[i], i))
    return ranked[:k]


def random_cases(seed: int, batch: int = 40, items: int = 30, hist_len: int = 6):
    rng = np.random.default_rng(seed)
    # Integer scores from a small range force many ties.
    scores = rng.integers(0, 6, size=(batch, items + 1)).astype(np.float32)
    history = rng.integers(0, items + 1, size=(batch, hist_len))
    targets = rng.integers(1, items + 1, size=batch)
    return scores, history, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_numpy_input(seed):
    scores, history, targets = random_cases(seed)
    item_tag = np.random.default_rng(seed + 10).random((scores.shape[1], 4)) < 0.3
    tags = np.random.default_rng(seed + 20).integers(-1, 4, size=len(targets))
    exclude = metrics.exclusion_mask(history, scores.shape[1], targets)
    out = metrics.case_metrics(scores, targets, exclude, ks=(5, 10), item_tag=item_tag, suppressed_tags=tags)
    for b in range(len(targets)):
        excluded = ({0} | set(history[b].tolist())) - {int(targets[b])}
        rank = brute_rank(scores[b].tolist(), int(targets[b]), excluded)
        assert out["rank"][b] == rank
        assert out["recall@10"][b] == (1.0 if rank <= 10 else 0.0)
        assert out["ndcg@5"][b] == pytest.approx(1 / math.log2(rank + 1) if rank <= 5 else 0.0)
        top = brute_top_k(scores[b].tolist(), excluded, 10)
        if tags[b] < 0:
            assert math.isnan(out["violation@10"][b])
        else:
            assert out["violation@10"][b] == pytest.approx(sum(item_tag[i, tags[b]] for i in top) / len(top))


@pytest.mark.parametrize("chunk", [1, 4, 7, 31, 100])
def test_chunked_ranking_equals_full_matrix(chunk):
    rng = np.random.default_rng(chunk)
    # Small-integer embeddings: dot products are exact in float32, so ties are real ties.
    queries = torch.from_numpy(rng.integers(-2, 3, size=(25, 3)).astype(np.float32))
    items = torch.from_numpy(rng.integers(-2, 3, size=(31, 3)).astype(np.float32))
    history = torch.from_numpy(rng.integers(0, 31, size=(25, 5)))
    targets = torch.from_numpy(rng.integers(1, 31, size=25))
    full = queries @ items.T
    exclude = metrics.exclusion_mask(history, 31, targets)
    want_ranks = metrics.target_ranks(full, targets, exclude)
    got_ranks = ranking.chunked_target_ranks(queries, items, targets, history, chunk_size=chunk)
    assert torch.equal(got_ranks, want_ranks)
    # Top-k uses the plain history exclusion (no target carve-out).
    want_ids, _ = metrics.top_k_items(full, metrics.exclusion_mask(history, 31), 10)
    got_scores, got_ids = ranking.chunked_top_k(queries, items, 10, history, chunk_size=chunk)
    assert torch.equal(got_ids, want_ids)
    assert torch.equal(got_scores, torch.gather(full, 1, want_ids))


def test_chunked_top_k_of_row_shards_merges_to_the_global_top_k():
    rng = np.random.default_rng(5)
    queries = torch.from_numpy(rng.integers(-2, 3, size=(8, 3)).astype(np.float32))
    items = torch.from_numpy(rng.integers(-2, 3, size=(21, 3)).astype(np.float32))
    history = torch.from_numpy(rng.integers(0, 21, size=(8, 4)))
    want = ranking.chunked_top_k(queries, items, 6, history, chunk_size=21)
    # Two row-wise shards: ids 0..10 and 11..20, ranked separately (as on two ranks), then merged.
    parts = [
        ranking.chunked_top_k(queries, items[:11], 6, history, chunk_size=4, first_id=0),
        ranking.chunked_top_k(queries, items[11:], 6, history, chunk_size=3, first_id=11),
    ]
    got = ranking.merge_top_k(parts[::-1], 6)  # shard order must not matter
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_chunked_top_k_pads_when_fewer_items_than_k():
    queries = torch.ones(1, 2)
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # ids 0 (padding), 1, 2
    scores, ids = ranking.chunked_top_k(queries, items, 4, torch.tensor([[2]]), chunk_size=2)
    assert ids.tolist() == [[1, -1, -1, -1]]
    assert scores[0, 0] == 1.0 and torch.isinf(scores[0, 1:]).all()
