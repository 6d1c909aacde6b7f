"""Shard writing (round trip, determinism, atomicity) and `data_pipeline.verify` on damaged data sets."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import webdataset as wds

import data_pipeline.shards as shards_mod
from data_pipeline.manifest import build_manifest, file_entry, shard_entries, write_manifest
from data_pipeline.shards import count_shard_samples, write_shards
from data_pipeline.verify import main as verify_main
from dpr_dist.common.schema import CASE_FIELDS, PROMPT_EMB_NAME, decode_case


def make_samples(n: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        hist = rng.integers(1, 500, size=int(rng.integers(0, 12))).astype(np.int32)
        fields = {"user": i + 1, "target": int(rng.integers(1, 500)), "pos_tag": i % 3}
        samples.append((f"test-standard-u{i + 1:09d}", hist, fields))
    return samples


def expected_case(fields: dict) -> list[int]:
    return [int(fields.get(name, -1)) for name in CASE_FIELDS]


def test_round_trip_through_webdataset(tmp_path):
    samples = make_samples(7)
    records = write_shards(samples, tmp_path, "test", "standard", 2, samples_per_shard=3, seed=0)

    assert [r[0] for r in records] == [f"shards/test/standard-0002-{i:05d}.tar" for i in range(3)]
    assert [r[1] for r in records] == [3, 3, 1]
    for relpath, _, sha in records:
        assert sha == hashlib.sha256((tmp_path / relpath).read_bytes()).hexdigest()
        assert count_shard_samples(tmp_path / relpath) == _count_members(tmp_path / relpath) // 2

    urls = [str(tmp_path / r[0]) for r in records]
    read = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        hist, case = decode_case(sample)
        read[sample["__key__"]] = (hist.tolist(), case.tolist())
    want = {key: (hist.tolist(), expected_case(fields)) for key, hist, fields in samples}
    assert read == want


def _count_members(path) -> int:
    import tarfile

    with tarfile.open(path) as archive:
        return len(archive.getmembers())


def _tree_bytes(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_cases_give_identical_bytes_whatever_their_order(tmp_path):
    samples = make_samples(40)
    write_shards(samples, tmp_path / "a", "train", "steer", 0, samples_per_shard=16, seed=5)
    write_shards(samples[::-1], tmp_path / "b", "train", "steer", 0, samples_per_shard=16, seed=5)
    write_shards(samples, tmp_path / "c", "train", "steer", 0, samples_per_shard=16, seed=6)
    a, b, c = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b"), _tree_bytes(tmp_path / "c")
    assert len(a) == 3 and a == b
    assert a != c  # negative control: the seed does change the shuffle


def test_samples_are_shuffled_not_sorted(tmp_path):
    samples = make_samples(50)
    records = write_shards(samples, tmp_path, "train", "steer", 1, samples_per_shard=50, seed=0)
    keys = [s["__key__"] for s in wds.WebDataset([str(tmp_path / records[0][0])], shardshuffle=False)]
    assert sorted(keys) == sorted(s[0] for s in samples)
    assert keys != sorted(keys)


def test_crash_mid_shard_leaves_no_final_named_shard(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_encode = shards_mod.encode_case

    def failing_encode(hist, **fields):
        calls["n"] += 1
        if calls["n"] == 5:  # inside the second shard of 3
            raise RuntimeError("simulated crash")
        return real_encode(hist, **fields)

    monkeypatch.setattr(shards_mod, "encode_case", failing_encode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_shards(make_samples(9), tmp_path, "valid", "negative", 0, samples_per_shard=3, seed=0)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["shards/valid/negative-0000-00000.tar"]  # complete shard kept, no temp file left
    assert count_shard_samples(tmp_path / files[0]) == 3


def test_empty_sample_list_writes_nothing(tmp_path):
    assert write_shards([], tmp_path, "train", "align", 3, samples_per_shard=4, seed=0) == []
    assert not any(tmp_path.rglob("*.tar"))


@pytest.mark.parametrize("key, message", [("a.b", "contains '.'"), ("", "is empty"), ("dup", "duplicate")])
def test_bad_keys_are_rejected(tmp_path, key, message):
    samples = [(key, [1], {"user": 1}), ("dup", [2], {"user": 2})]
    if key == "dup":
        samples.append(("other", [3], {"user": 3}))
    with pytest.raises(ValueError, match=message):
        write_shards(samples, tmp_path, "train", "warmup", 0, samples_per_shard=2, seed=0)


# --- verify -------------------------------------------------------------------------------------


def make_dataset(root) -> dict:
    """A small prepared directory: 2 shard sets, embeddings, a manifest (as prepare writes it)."""
    rows = []
    for split, kind, n in [("train", "warmup", 5), ("test", "standard", 4)]:
        for relpath, count, sha in write_shards(make_samples(n), root, split, kind, 0, samples_per_shard=2, seed=0):
            rows.append((split, kind, relpath, count, sha))
    np.save(root / PROMPT_EMB_NAME, np.eye(3, 8, dtype=np.float32))
    manifest = build_manifest(
        name="t", config={"name": "t"}, sources={}, counts={"users": 5, "items": 9, "interactions": 30, "prompts": 3},
        tags=["a"], encoder={"kind": "hash", "dim": 8, "model": "x"}, stats={},
        files={PROMPT_EMB_NAME: file_entry(root / PROMPT_EMB_NAME)}, shards=shard_entries(rows, root),
    )
    write_manifest(root, manifest)
    return manifest


def test_verify_accepts_an_intact_dataset(tmp_path, capsys):
    manifest = make_dataset(tmp_path)
    assert manifest["counts"]["samples"]["train/warmup"] == 5
    assert manifest["counts"]["samples"]["valid/standard"] == 0
    assert verify_main([str(tmp_path)]) == 0
    assert "OK:" in capsys.readouterr().out


def test_verify_names_truncated_altered_and_missing_files(tmp_path, capsys):
    make_dataset(tmp_path)
    truncated = tmp_path / "shards/train/warmup-0000-00001.tar"
    truncated.write_bytes(truncated.read_bytes()[:700])
    altered = tmp_path / "shards/test/standard-0000-00000.tar"
    data = bytearray(altered.read_bytes())
    data[600] ^= 0xFF  # inside the first member's payload: same size, different content
    altered.write_bytes(bytes(data))
    (tmp_path / "shards/train/warmup-0000-00002.tar").unlink()
    (tmp_path / "shards/test/standard-0000-00009.tar").write_bytes(b"")

    assert verify_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{tmp_path}: shards/train/warmup-0000-00001.tar: truncated (700 bytes, manifest says 10240)" in out
    assert f"{tmp_path}: shards/test/standard-0000-00000.tar: altered (sha256 differs from the manifest)" in out
    assert f"{tmp_path}: shards/train/warmup-0000-00002.tar: missing" in out
    assert f"{tmp_path}: shards/test/standard-0000-00009.tar: shard not listed in the manifest" in out
    assert out[-1] == f"FAILED: 4 problem(s) in {tmp_path}"


def test_verify_catches_a_wrong_sample_count_and_bad_embedding_shape(tmp_path, capsys):
    manifest = make_dataset(tmp_path)
    manifest["shards"]["shards/train/warmup-0000-00000.tar"]["count"] = 3
    manifest["counts"]["prompts"] = 4
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert verify_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "shards/train/warmup-0000-00000.tar: holds 2 samples, manifest says 3" in out
    assert "prompt_embeddings.npy: shape (3, 8), manifest implies [prompts, dim] = [4, 8]" in out


def test_verify_reports_an_unfinished_directory(tmp_path, capsys):
    write_shards(make_samples(3), tmp_path, "train", "warmup", 0, samples_per_shard=2, seed=0)
    assert verify_main([str(tmp_path)]) == 1
    assert f"{tmp_path}/manifest.json: missing (the preparation did not finish" in capsys.readouterr().out
