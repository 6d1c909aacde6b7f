"""Synthetic data: byte-level determinism, chunked writing, and its statistical structure."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import SourceConfig, SyntheticConfig
from data_pipeline.ingest import load_source
from data_pipeline.ingest.synthetic import generate, popularity_ranks, tag_names, zipf_ranks

SMALL = SyntheticConfig(num_items=3000, num_users=400, num_tags=8, mean_user_len=15, min_user_len=4, chunk_rows=1000)


def read(paths):
    events, items = (pq.read_table(p).to_pandas() for p in paths)
    return events, items


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = generate(SMALL, tmp_path / "a", seed=7)
    second = generate(SMALL, tmp_path / "b", seed=7)
    other = generate(SMALL, tmp_path / "c", seed=8)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    assert first[0].read_bytes() != other[0].read_bytes()
    assert first[1].read_bytes() != other[1].read_bytes()


def test_tables_are_written_in_row_groups_of_chunk_rows(tmp_path):
    events_path, items_path = generate(SMALL, tmp_path, seed=0)
    items_file = pq.ParquetFile(items_path)
    assert items_file.num_row_groups == 3
    assert [items_file.metadata.row_group(i).num_rows for i in range(3)] == [1000, 1000, 1000]
    events_file = pq.ParquetFile(events_path)
    per_chunk = SMALL.chunk_rows // SMALL.mean_user_len  # users per event chunk
    assert events_file.num_row_groups == math.ceil(SMALL.num_users / per_chunk)
    assert sorted(os.listdir(tmp_path)) == ["events.parquet", "items.parquet"]


def test_zipf_ranks_match_the_power_law():
    n, s = 2000, 1.1
    ranks = zipf_ranks(np.random.default_rng(0), 400_000, n, s)
    assert ranks.min() >= 1 and ranks.max() <= n
    # Independent: P(r) = integral of x^-s over [r-0.5, r+0.5], normalised over [0.5, n+0.5].
    edges = np.arange(n + 1) + 0.5
    mass = edges ** (1 - s) / (1 - s)
    expected = (mass[1:] - mass[:-1]) / (mass[-1] - mass[0])
    observed = np.bincount(ranks, minlength=n + 1)[1:] / ranks.size
    standard_error = np.sqrt(expected[:20] * (1 - expected[:20]) / ranks.size)
    assert (np.abs(observed[:20] - expected[:20]) < 4 * standard_error).all()
    assert abs(observed.sum() - 1) < 1e-12
    # Log-log slope of frequency against rank is -s (ranks 2..200, where counts are large).
    r = np.arange(2, 201)
    slope = np.polyfit(np.log(r), np.log(observed[r - 1]), 1)[0]
    assert slope == pytest.approx(-s, abs=0.03)


def structure(cfg: SyntheticConfig, tmp_path, seed: int = 1):
    events, items = read(generate(cfg, tmp_path, seed))
    tags = dict(zip(items["item"], items["tags"]))
    exploded = events.assign(tag=events["item"].map(tags)).explode("tag")
    per_tag = exploded.groupby(["user", "tag"]).size().unstack(fill_value=0)
    lengths = events.groupby("user").size()
    top2_share = (np.sort(per_tag.to_numpy(), axis=1)[:, -2:].sum(axis=1) / lengths.to_numpy()).mean()
    return events, items, lengths, top2_share


def test_events_follow_item_popularity_and_user_taste(tmp_path):
    base = SyntheticConfig(num_items=5000, num_users=3000, num_tags=10, mean_user_len=20, min_user_len=5,
                           popularity_exponent=1.1, chunk_rows=20_000)
    flat = SyntheticConfig(**{**base.__dict__, "taste_concentration": 0.0})
    tasteful = SyntheticConfig(**{**base.__dict__, "taste_concentration": 0.8})
    events, items, lengths, flat_share = structure(flat, tmp_path / "flat")
    # Popularity: event counts against the generator's own popularity ranks, log-log slope -s
    # (ranks 20..1000; the head is flattened because nobody takes an item twice).
    counts = events["item"].value_counts()
    frame = pd.DataFrame({"rank": popularity_ranks(flat.num_items, 1, counts.index.to_numpy()), "n": counts.to_numpy()})
    mid = frame[(frame["rank"] >= 20) & (frame["rank"] <= 1000)]
    assert np.polyfit(np.log(mid["rank"]), np.log(mid["n"]), 1)[0] == pytest.approx(-1.1, abs=0.1)
    # Taste: with 80% of draws inside 1-2 favourite tags, the user's two top tags cover >= 80% of
    # their events; without taste they cover what global popularity gives them.
    _, _, _, taste_share = structure(tasteful, tmp_path / "taste")
    assert taste_share >= 0.8
    assert taste_share - flat_share >= 0.2
    # Lengths: min_user_len + Geometric - 1 with the configured mean (3 standard errors).
    assert lengths.min() >= flat.min_user_len
    spread = math.sqrt((1 - 1 / 16) * 16**2)  # Geometric(p = 1/16) standard deviation
    assert abs(lengths.mean() - flat.mean_user_len) < 3 * spread / math.sqrt(flat.num_users)
    assert not events.duplicated(["user", "item"]).any()
    assert (events.groupby("user")["order"].apply(lambda o: list(o) == list(range(len(o))))).all()


def test_items_have_distinct_sorted_tags_and_text(tmp_path):
    _, items = read(generate(SMALL, tmp_path, seed=3))
    assert items["item"].tolist() == list(range(1, SMALL.num_items + 1))
    names = tag_names(SMALL.num_tags)
    counts = items["tags"].map(len)
    assert counts.min() >= 1 and counts.max() <= SMALL.num_tags
    assert counts.mean() == pytest.approx(SMALL.tags_per_item, abs=0.1)  # 1 + Poisson(mean - 1)
    for row in items.head(200).itertuples():
        tags = list(row.tags)
        assert tags == sorted(set(tags)) and set(tags) <= set(names)
        assert row.title == f"Item {row.item}" and row.text == f"Item {row.item}. Tags: {', '.join(tags)}"


def test_load_source_generates_once_and_reads_back(tmp_path):
    cfg = SourceConfig(format="synthetic", synthetic=SMALL)
    raw = load_source(cfg, cache_dir=tmp_path, seed=5)
    (folder,) = list(tmp_path.iterdir())
    events, items = read((folder / "events.parquet", folder / "items.parquet"))
    assert raw.events["user"].tolist() == events["user"].astype(str).tolist()
    assert raw.events["item"].tolist() == events["item"].astype(str).tolist()
    assert raw.events["order"].tolist() == events["order"].tolist()
    assert raw.events["source_row"].tolist() == list(range(len(events)))
    assert raw.items["tags"].tolist() == [list(t) for t in items["tags"]]
    assert raw.sources == [str((folder / n).resolve()) for n in ("events.parquet", "items.parquet")]
    stamp = (folder / "events.parquet").stat().st_mtime_ns
    again = load_source(cfg, cache_dir=tmp_path, seed=5)  # present: not regenerated
    assert (folder / "events.parquet").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.events, raw.events)
    load_source(cfg, cache_dir=tmp_path, seed=6)
    assert len(list(tmp_path.iterdir())) == 2  # another seed, another folder
    at_path = load_source(SourceConfig(format="synthetic", path=str(tmp_path / "here"), synthetic=SMALL), seed=5)
    pd.testing.assert_frame_equal(at_path.events, raw.events)


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"num_tags must be in 1\.\.64"):
        generate(SyntheticConfig(num_tags=65), tmp_path, 0)
    with pytest.raises(ValueError, match="min_user_len 5 needs at least 10 items"):
        generate(SyntheticConfig(num_items=6), tmp_path, 0)
