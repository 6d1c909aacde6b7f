"""The shared real data sets must load with their published statistics (see their PROVENANCE.md).

Located by conftest.require_dataset ($DPR_SHARED_DATA or <repo>/../shared/datasets); skipped when absent. Each load takes
a few seconds, so these run by default.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from conftest import require_dataset

from data_pipeline.config import SourceConfig
from data_pipeline.ingest import load_source

# PROVENANCE.md: movies per genre among the 3,706 rated ML-1M movies / the 1,682 ML-100k movies.
ML1M_GENRES = {"Drama": 1493, "Comedy": 1163, "Action": 495, "Thriller": 485, "Romance": 459, "Horror": 339,
               "Adventure": 281, "Sci-Fi": 274, "Children's": 250, "Crime": 201, "War": 141, "Musical": 113,
               "Documentary": 110, "Animation": 105, "Mystery": 104, "Fantasy": 68, "Western": 67, "Film-Noir": 44}
ML100K_GENRES = {"Drama": 725, "Comedy": 505, "Action": 251, "Thriller": 251, "Romance": 247, "Adventure": 135,
                 "Children's": 122, "Crime": 109, "Sci-Fi": 101, "Horror": 92, "War": 71, "Mystery": 61,
                 "Musical": 56, "Documentary": 50, "Animation": 42, "Western": 27, "Film-Noir": 24, "Fantasy": 22,
                 "unknown": 2}


def genre_counts(items, item_ids) -> Counter:
    rated = items[items["item"].isin(set(item_ids))]
    return Counter(tag for tags in rated["tags"] for tag in tags)


@pytest.fixture(scope="module")
def ml1m_sequences():
    started = time.perf_counter()
    raw = load_source(SourceConfig(format="ml-1m-sequences", path=str(require_dataset("ml-1m"))))
    return raw, time.perf_counter() - started


def test_ml1m_sequences_statistics(ml1m_sequences):
    raw, seconds = ml1m_sequences
    events = raw.events
    assert len(events) == 1_000_209
    assert events["user"].nunique() == 6_040 and events["item"].nunique() == 3_706
    assert len(raw.items) == 3_883 and set(events["item"]) <= set(raw.items["item"])
    assert genre_counts(raw.items, events["item"]) == ML1M_GENRES
    user1 = events[events["user"] == "1"].sort_values(["order", "source_row"])["item"].tolist()
    assert user1[:12] == ["3186", "1721", "1022", "1270", "2340", "1836", "3408", "1207", "2804", "720", "1193", "260"]
    folder = require_dataset("ml-1m").resolve()
    assert raw.sources == [str(folder / "sequences.csv.gz"), str(folder / "movies.dat")]
    assert seconds < 15, f"ML-1M took {seconds:.1f}s to load; the vectorised path should take a few seconds"


def test_ml1m_ratings_subset_agrees_with_sequences(ml1m_sequences):
    sequences = ml1m_sequences[0].events
    ratings = require_dataset("ml-1m") / "ratings_users1-2999.dat.gz"
    raw = load_source(SourceConfig(format="ml-1m", path=str(ratings)))
    events = raw.events
    assert len(events) == 487_650 and raw.skipped_rows == 0
    assert set(events["user"].astype(int)) == set(range(1, 3000))
    assert events.iloc[0].tolist() == ["1", "1193", 978300760, 0]  # the file's first line
    # PROVENANCE: along the sequences' order, the ratings' timestamps never decrease.
    subset = sequences[sequences["user"].astype(int) < 3000].sort_values(["user", "order"])
    timed = subset.merge(events[["user", "item", "order"]], on=["user", "item"], suffixes=("_seq", "_ts"))
    assert len(timed) == 487_650
    steps = np.diff(timed["order_ts"].to_numpy())
    same_user = timed["user"].to_numpy()[1:] == timed["user"].to_numpy()[:-1]
    assert (steps[same_user] >= 0).all()


def test_ml100k_zip_statistics():
    archive = require_dataset("ml-100k").resolve() / "ml-100k.zip"
    raw = load_source(SourceConfig(format="ml-100k", path=str(archive)))
    events = raw.events
    assert len(events) == 100_000
    assert events["user"].nunique() == 943 and events["item"].nunique() == 1_682
    assert events.iloc[0].tolist() == ["196", "242", 881250949, 0]
    assert genre_counts(raw.items, events["item"]) == ML100K_GENRES
    assert int((raw.items["tags"].map(len) > 1).sum()) == 849
    assert raw.sources == [str(archive)]
