"""The Ray preparation job end to end, in-process: outputs, determinism, reruns, crash recovery, paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
import yaml

from data_pipeline import prepare
from data_pipeline.config import DataConfig, EncoderConfig
from data_pipeline.encode import encode_prompts_local
from data_pipeline.verify import verify_dataset
from dpr_dist.common.configio import from_dict
from dpr_dist.common.schema import FIELD_INDEX, MANIFEST_NAME, decode_case
from conftest import require_dataset
from test_encode import ray_local  # noqa: F401  (module-scoped in-process Ray, shared fixture)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "data" / "tiny-synthetic.yaml"
# Made smaller than the shipped tiny config, to keep each run to a few seconds.
SMALL = ["--set", "source.synthetic.num_users=60", "--set", "source.synthetic.num_items=120"]
DATA_FILES = ("items.parquet", "prompts.parquet", "prompt_embeddings.npy")


def run(out: Path, *extra: str, config: Path = TINY) -> int:
    return prepare.main(["--config", str(config), "--set", f"output_dir={out}",
                         "--cache-dir", str(out.parent / "cache"), *SMALL, *extra])


def data_bytes(root: Path) -> dict[str, bytes]:
    """Every shard and data file (not manifest/config copy/markers, which name the directory)."""
    paths = sorted((root / "shards").rglob("*.tar")) + [root / name for name in DATA_FILES]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}


def read_cases(root: Path, split: str, kind: str) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    shards = sorted((root / "shards" / split).glob(f"{kind}-*.tar"))
    out = {}
    for shard in shards:
        for sample in wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False):
            hist, case = decode_case(sample)
            out[sample["__key__"]] = (shard.name, hist, case)
    return out


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("prep") / "a"
    assert run(out) == 0
    return out


def test_outputs_verify_and_agree_with_an_independent_reading(prepared):
    assert verify_dataset(prepared) == []
    manifest = json.loads((prepared / MANIFEST_NAME).read_text())
    items = pd.read_parquet(prepared / "items.parquet")
    prompts = pd.read_parquet(prepared / "prompts.parquet")
    emb = np.load(prepared / "prompt_embeddings.npy")
    counts = manifest["counts"]

    assert counts["items"] == len(items) and items["item_id"].tolist() == list(range(1, len(items) + 1))
    assert prompts["prompt_id"].tolist() == list(range(counts["prompts"]))
    assert manifest["encoder"] == {"kind": "hash", "dim": 64, "model": "hashed-bag-of-words+bigrams"}
    # The Ray actor pool's embeddings are bit-identical to the in-process reference encoder.
    assert np.array_equal(emb, encode_prompts_local(prompts["text"].tolist(), EncoderConfig(kind="hash", dim=64)))

    warmup = read_cases(prepared, "train", "warmup")
    users = sorted(int(case[FIELD_INDEX["user"]]) for _, _, case in warmup.values())
    assert users == list(range(1, counts["users"] + 1))
    assert counts["interactions"] == sum(len(hist) for _, hist, _ in warmup.values()) + 2 * counts["users"]
    # Users are partitioned by user_id % num_partitions; align cases all live in partition 0.
    for shard, _, case in warmup.values():
        assert int(shard.split("-")[1]) == case[FIELD_INDEX["user"]] % 2
    assert {shard.split("-")[1] for shard, _, _ in read_cases(prepared, "train", "align").values()} == {"0000"}
    for (split_kind, n) in counts["samples"].items():
        split, kind = split_kind.split("/")
        assert len(read_cases(prepared, split, kind)) == n, split_kind
    assert counts["samples"]["test/standard"] == counts["users"]

    copy = yaml.safe_load((prepared / "config.yaml").read_text())
    assert from_dict(DataConfig, copy).output_dir == str(prepared) == manifest["config"]["output_dir"]


def test_second_run_is_byte_identical(prepared, tmp_path):
    assert run(tmp_path / "b") == 0
    assert data_bytes(tmp_path / "b") == data_bytes(prepared)
    # Negative control: another seed changes the shards.
    assert run(tmp_path / "c", "--set", "seed=1") == 0
    assert data_bytes(tmp_path / "c") != data_bytes(prepared)


def test_rerun_of_finished_output_is_up_to_date(prepared, capsys):
    before = {p: p.stat().st_mtime_ns for p in prepared.rglob("*") if p.is_file()}
    assert run(prepared) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*") if p.is_file()} == before


def test_damaged_output_is_rebuilt_reusing_intact_partitions(prepared, tmp_path, capsys):
    out = tmp_path / "crashed"
    shutil.copytree(prepared, out)
    # A crash: no manifest yet, one shard of partition 1 lost, a temp file left behind.
    (out / MANIFEST_NAME).unlink()
    next((out / "shards" / "test").glob("standard-0001-*.tar")).unlink()
    (out / "shards" / "test" / ".standard-0001-00009.tar.abc.tmp").write_bytes(b"partial")
    capsys.readouterr()
    assert run(out) == 0
    log = capsys.readouterr().out
    assert "partitions reused from an earlier run: 1/2; stale files removed: 1" in log
    assert verify_dataset(out) == []
    assert data_bytes(out) == data_bytes(prepared)


def test_changed_config_redoes_all_partitions_and_drops_stale_shards(prepared, tmp_path, capsys):
    out = tmp_path / "resharded"
    shutil.copytree(prepared, out)
    capsys.readouterr()
    assert run(out, "--set", "samples_per_shard=7") == 0
    assert "partitions reused from an earlier run: 0/2" in capsys.readouterr().out
    assert verify_dataset(out) == []  # would flag any shard left over from the old layout
    old, new = json.loads((prepared / MANIFEST_NAME).read_text()), json.loads((out / MANIFEST_NAME).read_text())
    assert new["counts"]["samples"] == old["counts"]["samples"]
    assert max(e["count"] for e in new["shards"].values()) == 7
    assert read_cases(out, "valid", "negative").keys() == read_cases(prepared, "valid", "negative").keys()


def test_relative_paths_resolve_against_data_root_then_cwd(monkeypatch, tmp_path):
    cfg = DataConfig(output_dir="data/x")
    cfg.source.path = "../shared/d.zip"
    monkeypatch.setenv("DPR_DATA_ROOT", str(tmp_path / "root"))
    resolved = prepare.resolve_paths(cfg, prepare.data_root())
    assert resolved.output_dir == str(tmp_path / "root" / "data" / "x")
    assert resolved.source.path == str(tmp_path / "shared" / "d.zip")
    assert resolved.source.items_path is None
    monkeypatch.delenv("DPR_DATA_ROOT")
    monkeypatch.chdir(tmp_path)
    assert prepare.resolve_paths(cfg, prepare.data_root()).output_dir == str(tmp_path / "data" / "x")
    assert prepare.resolve_paths(DataConfig(output_dir="/abs/y"), tmp_path).output_dir == "/abs/y"


def test_bad_config_is_reported_with_exit_code_2(tmp_path, capsys):
    assert run(tmp_path / "z", "--set", "num_partitions=0") == 2
    assert "num_partitions must be >= 1, got 0" in capsys.readouterr().err
    assert run(tmp_path / "z", "--set", "encoder.kindd=hash") == 2
    assert f"{TINY}.encoder: unknown key(s) ['kindd']" in capsys.readouterr().err
    assert run(tmp_path / "z", "--set", "phrasings.train_positive=[more please]") == 2
    assert "phrasings.train_positive: 'more please' must contain {tag} exactly once" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_missing_source_is_reported_with_its_path(ray_local, tmp_path, capsys):  # noqa: F811
    config = tmp_path / "missing.yaml"
    missing = tmp_path / "nowhere" / "events.csv"
    config.write_text(yaml.safe_dump({"source": {"format": "table", "path": str(missing),
                                                 "columns": {"user": "u", "item": "i", "order": "t"}}}))
    assert prepare.main(["--config", str(config), "--set", f"output_dir={tmp_path / 'out'}"]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def write_table_source(root: Path) -> Path:
    """A small interaction table whose tags include Horror, so the prompts include "no horror please"."""
    rng = np.random.default_rng(3)
    genres = ["Horror", "Comedy", "Horror|Comedy"]
    rows = [(u, int(i), t, f"Movie {i}", genres[int(i) % 3])
            for u in range(1, 13) for t, i in enumerate(rng.choice(np.arange(1, 30), size=8, replace=False))]
    path = root / "events.csv"
    pd.DataFrame(rows, columns=["uid", "iid", "ts", "name", "genres"]).to_csv(path, index=False)
    return path


def test_minilm_end_to_end_on_a_table_source(ray_local, tmp_path):  # noqa: F811
    source = write_table_source(tmp_path)
    config = tmp_path / "table.yaml"
    config.write_text(yaml.safe_dump({
        "name": "table-minilm",
        "source": {"format": "table", "path": str(source),
                   "columns": {"user": "uid", "item": "iid", "order": "ts", "title": "name", "tags": "genres"}},
        "num_partitions": 2, "samples_per_shard": 50,
        "encoder": {"kind": "minilm", "num_actors": 2, "batch_size": 32},
    }))
    out = tmp_path / "out"
    assert prepare.main(["--config", str(config), "--set", f"output_dir={out}"]) == 0
    assert verify_dataset(out) == []
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["tags"] == ["Comedy", "Horror"] and manifest["counts"]["users"] == 12
    assert manifest["sources"] == {str(source): hashlib.sha256(source.read_bytes()).hexdigest()}
    prompts = pd.read_parquet(out / "prompts.parquet")
    emb = np.load(out / "prompt_embeddings.npy")
    row = prompts.index[prompts["text"] == "no horror please"]
    assert len(row) == 1
    cfg = EncoderConfig(kind="minilm", batch_size=32)
    np.testing.assert_allclose(emb[row[0]], encode_prompts_local(["no horror please"], cfg)[0], atol=1e-6)
    assert np.array_equal(emb, encode_prompts_local(prompts["text"].tolist(), cfg))


@pytest.mark.realdata  # ~35 s on the shared 2-CPU box
def test_shipped_ml100k_shared_config_on_the_real_zip(ray_local, tmp_path):  # noqa: F811
    zip_path = require_dataset("ml-100k") / "ml-100k.zip"
    out = tmp_path / "ml-100k"
    # The hash encoder keeps this fast; the MiniLM path is covered above and by the benchmark.
    assert prepare.main(["--config", str(REPO / "configs" / "data" / "ml-100k-shared.yaml"),
                         "--set", f"output_dir={out}", "--set", f"source.path={zip_path}",
                         "--set", "encoder.kind=hash"]) == 0
    assert verify_dataset(out) == []
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    # The official ML-100k figures (README of the archive).
    assert {k: manifest["counts"][k] for k in ("users", "items", "interactions")} == {
        "users": 943, "items": 1682, "interactions": 100_000}
    assert len(manifest["tags"]) == 19 and manifest["counts"]["samples"]["test/standard"] == 943
    assert list(manifest["sources"]) == [str(zip_path.resolve())]
