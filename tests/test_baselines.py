"""Baselines: popularity against an independent Counter, hard filter and text rerank by hand."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpr_dist.eval import baselines, metrics
from tiny_prepared import write_shard

# Items 1..5; tags: 0 on {1, 2}, 1 on {2, 3, 5}.
ITEM_TAG = torch.zeros(6, 2, dtype=torch.bool)
ITEM_TAG[[1, 2], 0] = True
ITEM_TAG[[2, 3, 5], 1] = True


@pytest.mark.parametrize("count_batch", [4_000_000, 7])  # 7: counted in many flushes, not at the end only
def test_popularity_counts_agree_with_counter(tmp_path, monkeypatch, count_batch):
    monkeypatch.setattr(baselines, "COUNT_BATCH_IDS", count_batch)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 41, size=rng.integers(1, 15)).tolist() for _ in range(60)]
    paths = []
    for index, part in enumerate((sequences[:25], sequences[25:])):
        paths.append(tmp_path / f"warmup-{index}.tar")
        write_shard(paths[-1], [(seq, {"user": u + 1}) for u, seq in enumerate(part)], f"w{index}_")
    counts = baselines.popularity_counts(paths, num_items=40)
    independent = collections.Counter(item for seq in sequences for item in seq)
    assert counts[0] == 0
    assert {i: int(c) for i, c in enumerate(counts) if c} == dict(independent)
    scores = baselines.popularity_scores(counts, batch_size=3)
    assert scores.shape == (3, 41) and torch.equal(scores[2], torch.from_numpy(counts).float())


def test_popularity_rejects_non_warmup_samples(tmp_path):
    path = tmp_path / "x.tar"
    write_shard(path, [([1, 2], {"user": 1}), ([3], {"user": 2, "target": 4})], "k")
    with pytest.raises(ValueError, match=r"x\.tar: sample 'k000001' is not a warm-up sample"):
        baselines.popularity_counts([path], num_items=5)


def test_hard_filter_by_hand():
    base = torch.arange(12, dtype=torch.float32).reshape(2, 6).repeat(2, 1)  # 4 rows
    pos = torch.tensor([0, -1, 1, -1])
    neg = torch.tensor([-1, 1, 0, -1])
    out = baselines.hard_filter(base, ITEM_TAG, pos, neg)
    inf = float("-inf")
    assert out.tolist() == [
        [inf, 1, 2, inf, inf, inf],    # positive tag 0: keep items 1, 2
        [6, 7, inf, inf, 10, inf],     # negative tag 1: drop 2, 3, 5 (column 0 untouched)
        [inf, inf, inf, 3, inf, 5],    # tag 1 but not tag 0: items 3, 5 (2 carries both)
        [6, 7, 8, 9, 10, 11],          # standard case: unchanged
    ]


def rerank_inputs():
    base = torch.tensor([[0.0, 10.0, 5.0, 4.0, 3.0, 2.0]])
    exclude = metrics.exclusion_mask(torch.tensor([[1]]), 6)  # item 1 is history
    # The tag's text points along x; items 3 and 5 are "about" the tag (cos 1), others cos 0.
    item_emb = torch.tensor([[0.0, 1], [0, 1], [0, 1], [1, 0], [0, 1], [1, 0]])
    tag_emb = torch.tensor([[1.0, 0.0]])
    return base, exclude, item_emb, tag_emb


def test_text_rerank_by_hand():
    base, exclude, item_emb, tag_emb = rerank_inputs()
    out = baselines.text_rerank(base, exclude, item_emb, tag_emb, torch.tensor([0]), torch.tensor([-1]), top_n=2, weight=2.0)
    # Top-2 of the backbone among rankable items: 2 (5.0), 3 (4.0). Reranked: 2 -> 5 + 2*0 = 5,
    # 3 -> 4 + 2*1 = 6. Floor = 5. Outside items keep backbone order below the floor:
    # best outside = 4 (3.0): 5 - 1 - (3 - 3) = 4; item 5 (2.0): 5 - 1 - (3 - 2) = 3, although its
    # cos is 1: the rerank never reaches beyond the top-N. Excluded columns keep their base.
    assert out.tolist() == [[0.0, 10.0, 5.0, 6.0, 4.0, 3.0]]
    neg = baselines.text_rerank(base, exclude, item_emb, tag_emb, torch.tensor([-1]), torch.tensor([0]), top_n=2, weight=2.0)
    # Negative: 3 -> 4 - 2 = 2, floor 2; outside 4 -> 2 - 1 - 0 = 1, 5 -> 2 - 1 - 1 = 0.
    assert neg.tolist() == [[0.0, 10.0, 5.0, 2.0, 1.0, 0.0]]


def test_text_rerank_ceiling_and_zero_weight_on_random_data():
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.normal(size=(50, 41)).astype(np.float32))
    history = torch.from_numpy(rng.integers(0, 41, size=(50, 5)))
    targets = torch.from_numpy(rng.integers(1, 41, size=50))
    exclude = metrics.exclusion_mask(history, 41, targets)
    item_emb = torch.from_numpy(rng.normal(size=(41, 8)).astype(np.float32))
    tag_emb = torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32))
    pos = torch.from_numpy(rng.integers(-1, 3, size=50))
    neg = torch.from_numpy(rng.integers(-1, 3, size=50))
    backbone = metrics.target_ranks(base, targets, exclude)
    zero = baselines.text_rerank(base, exclude, item_emb, tag_emb, pos, neg, top_n=10, weight=0.0)
    assert torch.equal(metrics.target_ranks(zero, targets, exclude), backbone)
    strong = baselines.text_rerank(base, exclude, item_emb, tag_emb, pos, neg, top_n=10, weight=50.0)
    ranks = metrics.target_ranks(strong, targets, exclude)
    # Targets outside the backbone top-10 keep their backbone rank; inside, they stay inside.
    assert torch.equal(ranks[backbone > 10], backbone[backbone > 10])
    assert (ranks[backbone <= 10] <= 10).all()
    assert (ranks != backbone).any()  # the rerank did something


def test_tune_rerank_weight_picks_the_helpful_weight():
    base, exclude, item_emb, tag_emb = rerank_inputs()
    target = torch.tensor([3])  # backbone rank 2; the positive tag is about item 3
    pos, neg = torch.tensor([0]), torch.tensor([-1])
    best, table = baselines.tune_rerank_weight(
        base, exclude, target, item_emb, tag_emb, pos, neg, top_n=2, grid=(0.0, 0.5, 2.0, 5.0), metric="ndcg@10"
    )
    # w = 0, 0.5: item 3 scores 4 + w <= 5 -> rank 2 (tie at w=1 would also lose): ndcg 1/log2(3).
    # w = 2, 5: 4 + w > 5 -> rank 1, ndcg 1; the tie between 2 and 5 goes to the earlier grid value.
    assert table == pytest.approx({0.0: 0.6309297535714575, 0.5: 0.6309297535714575, 2.0: 1.0, 5.0: 1.0})
    assert best == 2.0


def shared_data_dir() -> Path:
    return Path(os.environ.get("DPR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"))


def test_ml1m_most_popular_agrees_with_an_independent_computation(tmp_path):
    """Leave-one-out test on real ML-1M: the harness vs. searchsorted over sorted counts."""
    path = shared_data_dir() / "ml-1m" / "sequences.csv.gz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path} (set DPR_SHARED_DATA to the shared datasets folder)")
    frame = pd.read_csv(path).sort_values(["user_id", "seq_idx"])
    dense = {orig: i + 1 for i, orig in enumerate(sorted(frame["movie_id"].unique()))}
    sequences = [g.map(dense).to_numpy() for _, g in frame.groupby("user_id")["movie_id"]]
    num_items = len(dense)
    shard = tmp_path / "warmup.tar"
    write_shard(shard, [(seq[:-2], {"user": u + 1}) for u, seq in enumerate(sequences)], "u")

    counts = baselines.popularity_counts([shard], num_items)
    targets = torch.tensor([seq[-1] for seq in sequences])
    history = [seq[:-1] for seq in sequences]
    parts = []
    for lo in range(0, len(sequences), 1000):
        hist = torch.from_numpy(np.stack([np.pad(h[-2400:], (2400 - len(h[-2400:]), 0)) for h in history[lo:lo + 1000]]))
        exclude = metrics.exclusion_mask(hist, num_items + 1, targets[lo:lo + 1000])
        scores = baselines.popularity_scores(counts, hist.shape[0])
        parts.append(metrics.case_metrics(scores, targets[lo:lo + 1000], exclude, ks=(10,)))
    harness = metrics.concat_case_metrics(parts)

    independent_counts = pd.Series(np.concatenate([seq[:-2] for seq in sequences])).value_counts()
    c = np.zeros(num_items + 1, dtype=np.int64)
    c[independent_counts.index.to_numpy()] = independent_counts.to_numpy()
    assert np.array_equal(c, counts)
    ordered = np.sort(c[1:])
    ranks = []
    for seq in sequences:
        target_count = c[seq[-1]]
        at_least = len(ordered) - np.searchsorted(ordered, target_count, side="left")  # includes target
        in_history = int((c[np.setdiff1d(seq[:-1], seq[-1:])] >= target_count).sum())
        ranks.append(at_least - in_history)
    ranks = np.array(ranks)
    assert np.array_equal(harness["rank"], ranks)
    ndcg = np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0).mean()
    assert harness["ndcg@10"].mean() == pytest.approx(ndcg)
    print(f"ML-1M most-popular test NDCG@10 = {ndcg:.4f}, HR@10 = {(ranks <= 10).mean():.4f}")
