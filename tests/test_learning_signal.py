"""Does DPR learn to steer? A fixed-seed run on real MovieLens-100k, judged against its baselines.

Data preparation (Ray, MiniLM prompts), the three stages and the full-ranking evaluation all run
for real (a few minutes). Model selection uses validation; the assertions read the TEST split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline import prepare
from launch import evaluate, train
from conftest import REPO, require_dataset

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    archive = require_dataset("ml-100k") / "ml-100k.zip"
    root = tmp_path_factory.mktemp("ml100k")
    data_dir, run_dir = root / "data", root / "run"
    assert prepare.main([
        "--config", str(REPO / "configs/data/ml-100k-shared.yaml"),
        "--set", f"source.path={archive}", "--set", f"output_dir={data_dir}",
    ]) == 0
    assert train.main([
        "--config", str(REPO / "configs/train/ml-100k-ci.yaml"),
        "--set", f"data_dir={data_dir}", "--set", f"out_dir={run_dir}",
    ]) == 0
    assert evaluate.main(["--checkpoint", str(run_dir / "steer"), "--out", str(run_dir / "report")]) == 0
    return json.loads((run_dir / "report" / "report.json").read_text())


def ndcg(row: dict, method: str) -> float:
    return row[method]["ndcg@10"]


def test_backbone_beats_popularity_on_standard_task(report):
    standard = report["results"]["standard"]["all"]
    assert ndcg(standard, "backbone") > 1.5 * ndcg(standard, "popularity")
    assert standard["dpr"] == standard["backbone"]  # no prompt: u == h exactly


def test_positive_steering_beats_backbone_and_hard_filter(report):
    positive = report["results"]["positive"]["all"]
    print({m: round(ndcg(positive, m), 4) for m in positive})
    assert "popularity+filter" in positive  # the popularity baseline is reported beside it
    assert ndcg(positive, "dpr") >= 1.2 * ndcg(positive, "backbone")
    assert ndcg(positive, "dpr") > ndcg(positive, "hard_filter")


def test_negative_prompts_suppress_the_tag(report):
    negative = report["results"]["negative"]["all"]
    print({m: round(negative[m]["violation@10"], 4) for m in negative})
    assert negative["dpr"]["violation@10"] < 0.5 * negative["backbone"]["violation@10"]
    assert negative["hard_filter"]["violation@10"] == 0.0
    assert negative["dpr+filter"]["violation@10"] == 0.0
