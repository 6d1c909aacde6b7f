"""Prepared-directory loading and the shard reader: padding, determinism, resume, rank slices."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
import torch

from dpr_dist.common import schema
from dpr_dist.data import PreparedDataError, ShardDataset, ShardLoader, collate_cases, left_pad, load_prepared, shard_loader
from tiny_prepared import ITEM_TAGS, TAGS, numbered_cases, write_prepared

# 3 shards of 11, 7 and 5 samples = 23 cases, users 1..23.
CASES = numbered_cases(23)
SHARDS = [CASES[:11], CASES[11:18], CASES[18:]]


@pytest.fixture
def prepared_dir(tmp_path):
    warmup = [[([1, 2, 3, 4, 5], {"user": 1}), ([6], {"user": 2}), ([2, 3], {"user": 3})]]
    return write_prepared(tmp_path / "prep", {("train", "steer"): SHARDS, ("train", "warmup"): warmup})


def users(batches) -> list[list[int]]:
    return [b["user"].tolist() for b in batches]


def make(prepared_dir, **kw) -> ShardDataset:
    prep = load_prepared(prepared_dir)
    args = dict(global_batch=4, max_len=3, seed=11, shuffle_buffer=5)
    return ShardDataset(prep.shards("train", "steer"), **{**args, **kw})


def test_load_prepared(prepared_dir):
    prep = load_prepared(prepared_dir)
    assert prep.tag_names == TAGS and prep.num_items == 6
    assert prep.item_tag.shape == (7, 3) and prep.item_tag.dtype == torch.bool
    expected = {i for i, tags in ITEM_TAGS.items() for t in tags if t == "horror"}
    assert set(torch.nonzero(prep.item_tag[:, TAGS.index("horror")])[:, 0].tolist()) == expected
    assert not prep.item_tag[0].any()
    assert prep.prompt_embeddings.dtype == torch.float32 and prep.prompt_embeddings.shape == (4, 8)
    assert [n for _, n in prep.shards("train", "steer")] == [11, 7, 5]


def test_load_prepared_errors_name_the_file(prepared_dir):
    manifest_path = prepared_dir / schema.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    shard = prepared_dir / schema.shard_name("train", "steer", 0, 1)
    shard.rename(shard.with_suffix(".bak"))
    with pytest.raises(PreparedDataError, match=f"{shard}: missing shard listed in the manifest"):
        load_prepared(prepared_dir)
    shard.with_suffix(".bak").rename(shard)
    manifest_path.write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(PreparedDataError, match=f"{manifest_path}: schema_version 99, this code reads 1"):
        load_prepared(prepared_dir)
    manifest_path.write_text(json.dumps({**manifest, "tags": ["action", "comedy"]}))
    with pytest.raises(PreparedDataError, match=r"items\.parquet: item 3 has tag 'horror', not in manifest tags"):
        load_prepared(prepared_dir)
    manifest_path.write_text(json.dumps(manifest))
    items_path = prepared_dir / schema.ITEMS_NAME
    original_items = items_path.read_bytes()
    table = pq.read_table(items_path)
    pq.write_table(table.filter(pa.compute.not_equal(table["item_id"], 2)), items_path)  # a hole at id 2
    with pytest.raises(PreparedDataError, match=r"items\.parquet: column 'item_id' must be 1\.\."):
        load_prepared(prepared_dir)
    items_path.write_bytes(original_items)
    (prepared_dir / schema.PROMPTS_NAME).unlink()
    with pytest.raises(PreparedDataError, match=r"prompts\.parquet: missing prompt table"):
        load_prepared(prepared_dir)
    manifest_path.write_text('{"schema_version": 1,\n "tags": [,]}')
    with pytest.raises(PreparedDataError, match=f"{manifest_path}:2: invalid JSON"):
        load_prepared(prepared_dir)
    manifest_path.write_text("[1, 2]")  # valid JSON, not a manifest
    with pytest.raises(PreparedDataError, match=f"{manifest_path}: schema_version None"):
        load_prepared(prepared_dir)
    manifest_path.write_bytes(b'{"tags": "\xff"}')
    with pytest.raises(PreparedDataError, match=f"{manifest_path}: not UTF-8 text"):
        load_prepared(prepared_dir)
    manifest_path.unlink()
    with pytest.raises(PreparedDataError, match=r"manifest\.json: missing \(the preparation did not finish"):
        load_prepared(prepared_dir)


def test_left_pad_and_collate_by_hand():
    seqs = [np.array([5, 6, 7, 8, 9]), np.array([3]), np.array([], dtype=np.int32)]
    # Keep the 3 most recent items; pad on the left.
    assert left_pad(seqs, 3).tolist() == [[7, 8, 9], [0, 0, 3], [0, 0, 0]]
    case = np.array([4, 9, 1, -1, 2, -1, 1, 0], dtype=np.int64)  # CASE_FIELDS order
    batch = collate_cases([(seqs[0], case), (seqs[1], case + 1)], max_len=3)
    assert batch["hist"].tolist() == [[7, 8, 9], [0, 0, 3]]
    assert batch["user"].tolist() == [4, 5] and batch["target"].tolist() == [9, 10]
    assert batch["pos_tag"].tolist() == [2, 3] and batch["held_out"].tolist() == [1, 2]
    assert all(batch[f].dtype == torch.long for f in (*schema.CASE_FIELDS, "hist"))
    # Warm-up: input = seq[:-1], labels = seq[1:], aligned, most recent 3 positions kept.
    warm = collate_cases([(seqs[0], case), (np.array([4, 2]), case)], max_len=3, next_item=True)
    assert warm["hist"].tolist() == [[6, 7, 8], [0, 0, 4]]
    assert warm["labels"].tolist() == [[7, 8, 9], [0, 0, 2]]


def test_warmup_loader_gets_next_item_labels(prepared_dir):
    loader = shard_loader(load_prepared(prepared_dir), "train", "warmup", global_batch=3, max_len=4, shuffle=False)
    (batch,) = list(loader)
    assert batch["hist"].tolist() == [[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 2]]
    assert batch["labels"].tolist() == [[2, 3, 4, 5], [0, 0, 0, 0], [0, 0, 0, 3]]


def test_epoch_covers_each_sample_once_and_is_deterministic(prepared_dir):
    drop = list(make(prepared_dir))
    assert len(drop) == 5 == make(prepared_dir).steps_per_epoch()  # 23 // 4: tail of 3 dropped
    seen = sum(users(drop), [])
    assert len(set(seen)) == 20 and set(seen) <= set(range(1, 24))
    again = list(make(prepared_dir))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(drop, again) for k in a)
    assert seen != list(range(1, 21))  # it is shuffled
    ds = make(prepared_dir)
    ds.set_position(1, 0)
    assert sum(users(ds), []) != seen  # another epoch, another order
    assert sum(users(make(prepared_dir, seed=12)), []) != seen
    plain = sum(users(make(prepared_dir, shuffle=False)), [])
    assert plain == list(range(1, 21))  # manifest order


def test_pad_tail_repeats_and_marks_invalid(prepared_dir):
    batches = list(make(prepared_dir, tail="pad", shuffle=False))
    assert len(batches) == 6  # ceil(23 / 4)
    last = batches[-1]
    # Samples 21..23, then the epoch's first sample repeated and marked invalid.
    assert last["user"].tolist() == [21, 22, 23, 1] and last["valid"].tolist() == [True, True, True, False]
    valid_users = sum((b["user"][b["valid"]].tolist() for b in batches), [])
    assert valid_users == list(range(1, 24))


def test_resume_yields_exactly_the_rest(prepared_dir):
    full = ShardLoader(make(prepared_dir))
    epoch0 = users(full)
    epoch1 = users(full)
    interrupted = ShardLoader(make(prepared_dir))
    it = iter(interrupted)
    head = [next(it)["user"].tolist() for _ in range(2)]
    state = interrupted.state_dict()
    assert state["epoch"] == 0 and state["samples_consumed"] == 8
    resumed = ShardLoader(make(prepared_dir))
    resumed.load_state_dict(state)
    assert head + users(resumed) == epoch0
    assert users(resumed) == epoch1  # and the next epoch continues as uninterrupted
    # Negative control: the same fresh loader without the saved position replays from the start.
    assert users(ShardLoader(make(prepared_dir)))[: 3] != epoch0[2:]
    with pytest.raises(ValueError, match="saved global_batch=8, this loader has 4"):
        ShardLoader(make(prepared_dir)).load_state_dict({**state, "global_batch": 8})


def test_one_rank_and_two_ranks_see_the_same_global_batches(prepared_dir):
    single = list(make(prepared_dir))
    rank0 = list(make(prepared_dir, rank=0, world=2))
    rank1 = list(make(prepared_dir, rank=1, world=2))
    assert len(rank0) == len(rank1) == len(single)  # same number of steps: no rank can hang
    for whole, a, b in zip(single, rank0, rank1):
        assert a["hist"].shape[0] == b["hist"].shape[0] == 2
        for key in whole:
            assert torch.equal(torch.cat([a[key], b[key]]), whole[key])
    # A checkpoint taken with 2 ranks resumes on 1 rank at the same global position.
    two = ShardLoader(make(prepared_dir, rank=0, world=2))
    next(iter(two))
    one = ShardLoader(make(prepared_dir))
    one.load_state_dict(two.state_dict())
    assert users(one) == users(single)[1:]


def test_dataloader_workers_keep_the_stream_order(prepared_dir):
    expected = users(ShardLoader(make(prepared_dir)))
    assert users(ShardLoader(make(prepared_dir), num_workers=2)) == expected


def test_manifest_count_mismatch_fails_instead_of_hanging(prepared_dir):
    prep = load_prepared(prepared_dir)
    shards = [(p, n + 1 if i == 0 else n) for i, (p, n) in enumerate(prep.shards("train", "steer"))]
    ds = ShardDataset(shards, global_batch=4, max_len=3, name="steer")
    with pytest.raises(ValueError, match="steer: the manifest lists 24 samples in 3 shards, the shards hold 23"):
        list(ds)
    with pytest.raises(ValueError, match="global batch 5 is not divisible by world size 2"):
        ShardDataset(shards, global_batch=5, max_len=3, world=2)


def test_item_tag_matrix_marks_each_items_tags_and_names_an_unknown_one(tmp_path):
    import numpy as np
    import pyarrow as pa

    from dpr_dist.data.prepared import PreparedDataError, item_tag_matrix

    ids = np.array([1, 2, 3])
    tags = pa.chunked_array([pa.array([["b", "a"], []]), pa.array([["c"]])])
    matrix = item_tag_matrix(ids, tags, ["a", "b", "c"], tmp_path / "items.parquet")
    assert matrix.tolist() == [[False] * 3, [True, True, False], [False] * 3, [False, False, True]]
    with pytest.raises(PreparedDataError, match=r"items.parquet: item 3 has tag 'zz', not in manifest tags"):
        item_tag_matrix(ids, pa.array([["a"], [], ["c", "zz"]]), ["a", "b", "c"], tmp_path / "items.parquet")
