"""Report: subset means against numpy by hand, JSON/Markdown contents, code version, plots."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest

from dpr_dist.eval import plots, report

TAGS = ["action", "comedy", "horror"]
CASES = {  # 4 positive cases
    "pos_tag": np.array([0, 0, 2, 1]),
    "neg_tag": np.array([-1, -1, -1, -1]),
    "held_out": np.array([0, 1, 1, 0]),
    "shift": np.array([1, 0, 1, 0]),
}
PER_CASE = {
    "dpr": {"ndcg@10": np.array([1.0, 0.5, 0.0, 0.25]), "recall@10": np.array([1.0, 1.0, 0.0, 1.0])},
    "hard_filter": {"ndcg@10": np.array([0.5, 0.5, 0.0, 0.0]), "recall@10": np.array([1.0, 1.0, 0.0, 0.0])},
}


def test_summarise_task_subsets_by_hand():
    table, sizes = report.summarise_task("positive", PER_CASE, CASES, TAGS)
    assert list(table) == ["all", "seen", "held_out", "shift", "tag:action", "tag:comedy", "tag:horror"]
    assert sizes == {"all": 4, "seen": 2, "held_out": 2, "shift": 2, "tag:action": 2, "tag:comedy": 1, "tag:horror": 1}
    dpr = {s: table[s]["dpr"]["ndcg@10"] for s in table}
    assert dpr["all"] == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
    assert dpr["seen"] == pytest.approx((1 + 0.25) / 2)       # cases 0, 3
    assert dpr["held_out"] == pytest.approx((0.5 + 0) / 2)    # cases 1, 2
    assert dpr["shift"] == pytest.approx((1 + 0) / 2)         # cases 0, 2
    assert dpr["tag:action"] == pytest.approx(0.75)           # cases 0, 1
    assert table["tag:comedy"]["hard_filter"]["recall@10"] == 0.0
    # The negative task is cut by the suppressed tag and has no "shift" subset.
    neg_cases = {**CASES, "neg_tag": np.array([1, 1, 1, 1]), "pos_tag": np.array([-1] * 4)}
    neg_table, _ = report.summarise_task("negative", PER_CASE, neg_cases, TAGS)
    assert list(neg_table) == ["all", "seen", "held_out", "tag:comedy"]
    std_table, _ = report.summarise_task("standard", PER_CASE, CASES, TAGS)
    assert list(std_table) == ["all"]


def test_single_clause_tasks_are_also_cut_by_phrasing_template():
    templates = ["more {tag}", "more {tag}", "give {tag}", "no {tag}", "without {tag}"]  # prompt id -> template
    cases = {**CASES, "pos_prompt": np.array([0, 2, 1, 2]), "neg_prompt": np.array([-1] * 4)}
    table, sizes = report.summarise_task("positive", PER_CASE, cases, TAGS, templates)
    assert sizes["phrasing:more {tag}"] == 2 and sizes["phrasing:give {tag}"] == 2
    assert not any(s in sizes for s in ("phrasing:no {tag}", "phrasing:without {tag}"))  # no such case
    assert table["phrasing:more {tag}"]["dpr"]["ndcg@10"] == pytest.approx((1.0 + 0.0) / 2)  # cases 0, 2
    assert table["phrasing:give {tag}"]["hard_filter"]["ndcg@10"] == pytest.approx((0.5 + 0.0) / 2)  # 1, 3
    neg = {**CASES, "neg_tag": np.array([1, 1, 1, 1]), "pos_tag": np.array([-1] * 4),
           "pos_prompt": np.array([-1] * 4), "neg_prompt": np.array([4, 3, 4, 4])}
    _, neg_sizes = report.summarise_task("negative", PER_CASE, neg, TAGS, templates)
    assert neg_sizes["phrasing:without {tag}"] == 3 and neg_sizes["phrasing:no {tag}"] == 1
    # Combined prompts hold two phrasings: no template subsets; without templates, none either.
    both = {**cases, "neg_prompt": np.array([3, 3, 4, 4])}
    combined, _ = report.summarise_task("combined", PER_CASE, both, TAGS, templates)
    assert not any(s.startswith("phrasing:") for s in combined)
    assert not any(s.startswith("phrasing:") for s in report.summarise_task("positive", PER_CASE, cases, TAGS)[0])


def test_aggregate_seeds():
    runs = [{"t": {"all": {"m": {"ndcg@10": v}}}} for v in (0.1, 0.2, 0.3)]
    leaf = report.aggregate_seeds(runs)["t"]["all"]["m"]["ndcg@10"]
    # mean 0.2; sample std = sqrt(((-.1)^2 + 0 + .1^2) / 2) = 0.1
    assert leaf == pytest.approx({"mean": 0.2, "std": 0.1, "n": 3})


def git(repo, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_write_report_json_and_markdown(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "f.txt").write_text("x")
    git(repo, "add", "f.txt")
    git(repo, "commit", "-q", "-m", "c")
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"schema_version": 1}')
    table, sizes = report.summarise_task("positive", PER_CASE, CASES, TAGS)
    results = {"positive": {"all": table["all"]}}
    results["positive"]["all"]["dpr"]["violation@10"] = float("nan")
    rep = report.build_report(results, config={"lr": 0.1}, seed=7, manifest_path=manifest, repo_dir=repo,
                              subset_sizes={"positive": sizes})
    json_path, md_path = report.write_report(tmp_path / "out", rep)
    data = json.loads(json_path.read_text())
    assert data["data"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert data["code_version"] == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    assert data["results"]["positive"]["all"]["dpr"]["ndcg@10"] == pytest.approx(0.4375)
    assert data["results"]["positive"]["all"]["dpr"]["violation@10"] is None  # NaN -> null
    assert data["config"] == {"lr": 0.1} and data["seed"] == 7
    md = md_path.read_text()
    assert "## positive / all (4 cases)" in md
    assert "| method | recall@10 | ndcg@10 | violation@10 |" in md
    assert "| dpr | 0.7500 | 0.4375 | – |" in md
    assert "| hard_filter | 0.5000 | 0.2500 | – |" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]  # no temp files
    (repo / "f.txt").write_text("changed")
    assert report.code_version(repo)["dirty"] is True
    assert report.code_version(tmp_path / "out") == {"commit": None, "dirty": None}  # not a repository


def test_markdown_shows_mean_and_spread():
    rep = {
        "results": {"standard": {"all": {"sasrec": {"ndcg@10": {"mean": 0.18, "std": 0.004, "n": 3}}}}},
        "data": {"manifest_sha256": "ab"}, "code_version": {"commit": None, "dirty": None}, "seed": [0, 1, 2],
    }
    assert "| sasrec | 0.1800 ± 0.0040 |" in report.render_markdown(rep)


def test_plots_are_png_and_deterministic(tmp_path):
    history = [
        {"stage": "warmup", "epoch": e, "loss": 3.0 - e, "valid_ndcg@10": 0.05 * e} for e in range(3)
    ] + [{"stage": "steer", "epoch": e, "loss": 1.0 / (e + 1)} for e in range(2)]
    a = plots.plot_training_curves(history, tmp_path / "a.png")
    b = plots.plot_training_curves(history, tmp_path / "b.png")
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes()
    results = {"positive": {
        "all": {"dpr": {"ndcg@10": 0.3}, "hard": {"ndcg@10": 0.2}},
        "tag:action": {"dpr": {"ndcg@10": 0.3}, "hard": {"ndcg@10": 0.2}},
        "tag:horror": {"dpr": {"ndcg@10": 0.1}, "hard": {"ndcg@10": 0.2}},
        "tag:war": {"dpr": {"ndcg@10": 0.1}, "hard": {"ndcg@10": 0.0}},
    }}
    gains = plots.steering_gains(results, "positive", "dpr", "hard")
    assert gains == pytest.approx({"action": 50.0, "horror": -50.0})  # 0.3/0.2 - 1; 0.1/0.2 - 1; war: no base
    out = plots.plot_steering_gains(results, tmp_path / "gains.png", "positive", "dpr", "hard")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no tag:<name> subsets"):
        plots.plot_steering_gains({"negative": {"all": {}}}, tmp_path / "x.png", "negative", "dpr", "hard")


def test_markdown_folds_per_tag_and_per_phrasing_tables_after_the_headline_ones():
    row = {"dpr": {"ndcg@10": 0.5}}
    subsets = {"all": row, "tag:Horror": row, "seen": row, "phrasing:no {tag}": row, "tag:Comedy": row}
    rep = {"results": {"positive": subsets, "standard": {"all": row}}, "data": {"manifest_sha256": "ab"},
           "code_version": {"commit": None, "dirty": None}, "seed": 0}
    md = report.render_markdown(rep)
    headings = [line for line in md.splitlines() if line.startswith(("## ", "<details>"))]
    assert headings == [
        "## positive / all", "## positive / seen",
        "<details><summary>positive: per tag (2 tables)</summary>", "## positive / tag:Horror", "## positive / tag:Comedy",
        "<details><summary>positive: per phrasing template (1 table)</summary>", "## positive / phrasing:no {tag}",
        "## standard / all",
    ]
    assert md.count("</details>") == 2 and md.count("| dpr | 0.5000 |") == 6
