"""ML-1M end to end through normalise() and build_cases(), checked against the published counts
and against a plain-Python recomputation of the steering rules from the raw files.

Reads the shared, read-only copy (DPR_SHARED_DATA or <repo>/../shared/datasets); ~10 s.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipeline.cases import build_cases
from data_pipeline.config import DataConfig
from data_pipeline.normalise import normalise
from data_pipeline.records import RawData
from data_pipeline.templates import build_prompts

REPO = Path(__file__).resolve().parents[1]
WINDOW = 20


def ml1m_dir() -> Path:
    root = Path(os.environ.get("DPR_SHARED_DATA", REPO.parent / "shared" / "datasets"))
    folder = root / "ml-1m"
    if not (folder / "sequences.csv.gz").exists() or not (folder / "movies.dat").exists():
        pytest.skip(f"ML-1M not found at {folder} (set DPR_SHARED_DATA to the datasets folder)")
    return folder


@pytest.fixture(scope="module")
def ml1m():
    folder = ml1m_dir()
    seq = pd.read_csv(folder / "sequences.csv.gz", dtype={"user_id": str, "movie_id": str,
                                                          "seq_idx": "int64"})
    movies = pd.read_csv(folder / "movies.dat", sep="::", engine="python", encoding="latin-1",
                         header=None, names=["item", "title", "genres"], dtype=str)
    events = pd.DataFrame({"user": seq["user_id"], "item": seq["movie_id"],
                           "order": seq["seq_idx"], "source_row": np.arange(len(seq))})
    items = pd.DataFrame({"item": movies["item"], "title": movies["title"],
                          "tags": movies["genres"].str.split("|"), "text": movies["title"]})
    catalog = normalise(RawData(events, items, sources=[str(folder)]), DataConfig())
    return seq, movies, catalog


def test_ml1m_catalogue_matches_the_published_counts(ml1m):
    seq, _, catalog = ml1m
    assert catalog.num_users == 6040 and catalog.num_items == 3706
    assert catalog.stats["interactions"] == 1_000_209
    assert catalog.stats["duplicates_dropped"] == 0 and catalog.stats["unknown_item_events"] == 0
    assert len(catalog.tags) == 18 and catalog.tags[0] == "Action" and "Film-Noir" in catalog.tags
    originals = catalog.items["original_id"].to_numpy()
    first = [originals[i - 1] for i in catalog.sequences[1][:12]]
    # User 1's history as PROVENANCE.md quotes it (it matches ratings.dat's timestamps).
    assert first == ["3186", "1721", "1022", "1270", "2340", "1836", "3408", "1207", "2804",
                     "720", "1193", "260"]
    user_index = dict(zip(catalog.users["original_id"], catalog.users["user_id"]))
    for user, rows in seq.groupby("user_id"):
        ordered = rows.sort_values("seq_idx")["movie_id"].tolist()
        assert originals[catalog.sequences[user_index[user]] - 1].tolist() == ordered


def reference_steering(history: list[str], target: str, genres: dict[str, set[str]]):
    """DPR_SPEC's rules with explicit loops over original movie ids and movies.dat genres."""
    recent = Counter()
    for movie in history[-WINDOW:]:
        for g in genres[movie]:
            recent[g] += 1
    own = genres[target]
    positive = None
    for g in sorted(own):
        if positive is None or recent[g] < recent[positive]:
            positive = g
    shift = int(positive is not None and recent[positive] == 0)
    negative = None
    for counts in (recent, Counter(g for movie in history for g in genres[movie])):
        for g in sorted(counts):
            better = negative is None or counts[g] > counts[negative]
            if g not in own and counts[g] > 0 and better:
                negative = g
        if negative is not None:
            break
    return positive, shift, negative


def test_ml1m_steering_tags_agree_with_an_independent_recomputation(ml1m):
    seq, movies, catalog = ml1m
    prompts = build_prompts(catalog.tags)
    cfg = DataConfig()
    users = range(1, catalog.num_users + 1)
    out = build_cases(catalog, prompts, cfg, users)

    genres = {m: set(g.split("|")) for m, g in zip(movies["item"], movies["genres"])}
    originals = catalog.items["original_id"].to_numpy()
    user_original = catalog.users["original_id"].to_numpy()
    histories = {u: rows.sort_values("seq_idx")["movie_id"].tolist()
                 for u, rows in seq.groupby("user_id")}
    for split, cut in (("test", 1), ("valid", 2)):
        got = {task: {f["user"]: f for _, _, f in out[(split, task)]}
               for task in ("positive", "negative", "combined")}
        for user in users:
            full = histories[user_original[user - 1]]
            history, target = full[: len(full) - cut], full[len(full) - cut]
            positive, shift, negative = reference_steering(history, target, genres)
            pos_case, neg_case = got["positive"].get(user), got["negative"].get(user)
            assert (pos_case is None) == (positive is None), (split, user)
            assert (neg_case is None) == (negative is None), (split, user)
            if pos_case is not None:
                assert originals[pos_case["target"] - 1] == target
                assert (catalog.tags[pos_case["pos_tag"]], pos_case["shift"]) == (positive, shift)
            if neg_case is not None:
                assert catalog.tags[neg_case["neg_tag"]] == negative, (split, user)
            comb = got["combined"].get(user)
            assert (comb is not None) == (positive is not None and negative is not None)
            if comb is not None:
                assert (catalog.tags[comb["pos_tag"]], catalog.tags[comb["neg_tag"]]) == (
                    positive, negative)

    flags = [f["held_out"] for task in ("positive", "negative", "combined")
             for _, _, f in out[("test", task)]]
    assert abs(np.mean(flags) - cfg.heldout_fraction) < 0.02  # ~18k draws: sd 0.004
    # Every user of ML-1M has >= 20 events: warm-up for all, 8 steer positions x standard.
    assert len(out[("train", "warmup")]) == 6040
    standard_steer = [f for k, _, f in out[("train", "steer")] if "steer_standard" in k]
    assert len(standard_steer) == 6040 * cfg.steer_cases_per_user
