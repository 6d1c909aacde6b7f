"""The three stages on a tiny prepared data set: freezing, checkpoints, determinism, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dpr_dist.common.configio import load_yaml
from dpr_dist.training.checkpoint import CheckpointError, load_checkpoint
from dpr_dist.training.config import TrainConfig
from dpr_dist.training.run import load_model, run_stages
from launch import evaluate, train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> TrainConfig:
    return load_yaml(TrainConfig, TINY, {"data_dir": str(data_dir), "out_dir": str(out_dir), **overrides})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def trained_run(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert train.main(["--config", str(TINY), "--set", f"data_dir={tiny_prepared}", "--set", f"out_dir={out}"]) == 0
    return out


def test_every_stage_writes_a_complete_checkpoint_selected_on_validation(trained_run):
    for stage in ("warmup", "align", "steer"):
        state, config, metrics = load_checkpoint(trained_run / stage)
        assert metrics["stage"] == stage
        assert metrics["selected_on"].startswith("valid/")
        history = [json.loads(line) for line in (trained_run / stage / "history.jsonl").read_text().splitlines()]
        # the kept epoch is the one with the best validation value
        key = metrics["selected_on"]
        sign = -1.0 if key.startswith("valid/-") else 1.0
        values = [sign * h[key.replace("valid/-", "valid/")] for h in history]
        assert metrics["best_epoch"] == max(range(len(values)), key=lambda i: (values[i], -i))
        assert config["seed"] == 0 and config["data_dir"]


def test_frozen_groups_stay_bit_identical_through_a_stage(trained_run, tiny_prepared, tmp_path):
    """align trains only the projection; steer leaves backbone and item table untouched."""
    warm, _, _ = load_model(trained_run / "warmup")
    align, _, _ = load_model(trained_run / "align")
    steer, _, _ = load_model(trained_run / "steer")
    changed = lambda a, b, prefix: [k for k, v in a.state_dict().items() if k.startswith(prefix) and not torch.equal(v, b.state_dict()[k])]
    for prefix in ("backbone.", "item_table.", "experts.", "router.", "fusion."):
        assert changed(warm, align, prefix) == [], prefix
    assert changed(warm, align, "projection."), "align must train the projection"
    for prefix in ("backbone.", "item_table."):
        assert changed(align, steer, prefix) == [], prefix
    assert changed(align, steer, "experts."), "steer must train the experts"


def test_stage_by_stage_equals_all_at_once(trained_run, tiny_prepared, tmp_path):
    cfg = tiny_config(tiny_prepared, tmp_path)
    run_stages(cfg, ("warmup",))
    run_stages(cfg, ("align", "steer"))
    a, _, _ = load_checkpoint(trained_run / "steer")
    b, _, _ = load_checkpoint(tmp_path / "steer")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_report_is_deterministic_and_no_prompt_path_equals_backbone(trained_run, tmp_path):
    for name in ("r1", "r2"):
        assert evaluate.main(["--checkpoint", str(trained_run / "steer"), "--out", str(tmp_path / name)]) == 0
    r1 = json.loads((tmp_path / "r1" / "report.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r1["results"] == r2["results"]
    standard = r1["results"]["standard"]["all"]
    assert standard["dpr"] == standard["backbone"]
    assert set(r1["results"]) == {"standard", "positive", "negative", "combined"}
    assert (tmp_path / "r1" / "report.md").read_text().startswith("# Evaluation report")
    assert (tmp_path / "r1" / "training_curves.png").stat().st_size > 1000
    # the hard filter never shows a suppressed item
    assert r1["results"]["negative"]["all"]["hard_filter"]["violation@10"] == 0.0
    assert r1["results"]["negative"]["all"]["dpr+filter"]["violation@10"] == 0.0


def test_steer_ablation_remakes_align_for_an_untrained_module_only(trained_run, tmp_path):
    """benchmarks/steer_ablation.py: a change of gate shape (scalar -> vector) keeps every trained
    tensor and re-initialises the gate as the changed model would; a change to a trained module (the
    backbone) is refused."""
    from benchmarks.steer_ablation import first_retrained_stage, remake_checkpoint
    from dpr_dist.modules import build_model

    trained = {"backbone", "item_table", "projection"}  # tiny.yaml: warm-up and align train these
    remake_align = lambda src, dst, overrides: remake_checkpoint(src, dst, overrides, trained)
    assert first_retrained_stage(trained_run, {"model.fusion_gate": "vector"}) == "steer"
    reinit = remake_align(trained_run / "align", tmp_path / "align", {"model.fusion_gate": "vector"})
    assert reinit == ["fusion.linear.bias", "fusion.linear.weight"]
    old, _, _ = load_model(trained_run / "align")
    new, cfg, metrics = load_model(tmp_path / "align")
    assert cfg.model.fusion_gate == "vector" and metrics["reinitialised"] == reinit
    for key, value in old.state_dict().items():
        if key not in reinit:
            assert torch.equal(value, new.state_dict()[key]), key
    table = new.item_table.embedding.weight.detach()
    fixed = new.item_table.fixed
    fresh = build_model(cfg.model, table.shape[0] - 1, seed=cfg.seed,
                        fixed_columns=table[:, table.shape[1] - fixed:] if fixed else None)
    assert torch.equal(new.fusion.linear.weight, fresh.fusion.linear.weight)
    assert new.fusion.linear.weight.shape[0] == cfg.model.hidden != old.fusion.linear.weight.shape[0]
    for fewer_or_more in ({"model.num_blocks": 2}, {"model.num_blocks": 0}):  # backbone tensors added / gone
        with pytest.raises(SystemExit, match="an earlier stage trained it"):
            remake_align(trained_run / "align", tmp_path / "refused", fewer_or_more)
    assert not (tmp_path / "refused").exists()


def test_benchmark_evaluation_is_kept_until_the_steer_checkpoint_is_newer(trained_run, tmp_path):
    """benchmarks/bench_quality.py evaluate_on_test (shared by steer_ablation.py): a finished report
    is not recomputed on a rerun, and is recomputed once the steer checkpoint is replaced."""
    import os
    import shutil

    from benchmarks.bench_quality import evaluate_on_test

    shutil.copytree(trained_run / "steer", tmp_path / "steer")
    report = evaluate_on_test(tmp_path, tmp_path / "run.log")
    first = json.loads(report.read_text())
    assert first["split"] == "test" and report == tmp_path / "report" / "report.json"
    made = report.stat().st_mtime_ns
    assert evaluate_on_test(tmp_path, tmp_path / "run.log").stat().st_mtime_ns == made
    later = made / 1e9 + 10
    os.utime(tmp_path / "steer" / "COMPLETE", (later, later))
    assert evaluate_on_test(tmp_path, tmp_path / "run.log").stat().st_mtime_ns > made
    assert (tmp_path / "run.log").read_text().count("launch.evaluate") == 2


def test_benchmark_run_log_is_written_as_the_child_prints(tmp_path, monkeypatch):
    """bench_quality.run gives its child an unbuffered stdout: a Python child writing to a file
    block-buffers otherwise, and the run log lagged the training by minutes."""
    import sys

    from benchmarks.bench_quality import run

    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the child must not inherit it from us
    log = tmp_path / "run.log"
    run([sys.executable, "-c", "import sys; print('write_through', sys.stdout.write_through)"], log)
    assert "write_through True" in log.read_text()
    with pytest.raises(SystemExit, match="failed \\(3\\)"):
        run([sys.executable, "-c", "raise SystemExit(3)"], log)


def test_benchmark_summary_means_ratios_per_seed_and_skips_missing_subsets():
    """bench_quality.summarise: a ratio row is the mean over seeds of each seed's own ratio (not the
    ratio of the means); a subset that one seed's report lacks gives no row rather than a partial mean."""
    import statistics

    from benchmarks.bench_quality import summarise

    def report(seed, dpr, hard_filter, with_shift):
        positive = {"all": {"dpr": {"ndcg@10": dpr}, "hard_filter": {"ndcg@10": hard_filter}}}
        if with_shift:
            positive["shift"] = positive["all"]
        return {"seed": seed, "results": {"positive": positive}}

    summary, markdown = summarise({"sasrec": [report(0, 0.3, 0.2, True), report(1, 0.5, 0.25, False)]})
    rows = summary["sasrec"]["rows"]
    ratio = rows["positive/all/dpr/ndcg@10/over:hard_filter"]
    assert ratio["mean"] == pytest.approx(statistics.mean([1.5, 2.0]))  # the ratio of the means is 1.778
    assert ratio["std"] == pytest.approx(statistics.stdev([1.5, 2.0]))
    assert rows["positive/all/dpr/ndcg@10"]["mean"] == pytest.approx(0.4)
    assert not any("/shift/" in key for key in rows) and "| shift |" not in markdown
    assert "| positive | all | dpr / hard_filter | ndcg@10 ratio | 1.750 ± 0.354 | >= 1.7 |" in markdown


def test_steer_selection_can_charge_the_violation_rate(trained_run, tiny_prepared, tmp_path):
    """steer.violation_weight (ours): the kept epoch maximises mean NDCG@10 - w * violation@10, both
    read from validation; w = 0 is DPR_SPEC's plain mean NDCG@10."""
    import shutil

    for stage in ("warmup", "align"):
        shutil.copytree(trained_run / stage, tmp_path / stage)
    cfg = tiny_config(tiny_prepared, tmp_path, **{"steer.violation_weight": 3.0, "steer.epochs": 3,
                                                  "steer.patience": 3})
    run_stages(cfg, ("steer",))
    _, _, metrics = load_checkpoint(tmp_path / "steer")
    assert metrics["selected_on"] == "valid/mean_ndcg@10-3*violation@10"
    history = [json.loads(line) for line in (tmp_path / "steer" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3
    for row in history:
        mean = sum(row[f"valid/{t}/ndcg@10"] for t in ("standard", "positive", "negative")) / 3
        assert row["valid/mean_ndcg@10"] == pytest.approx(mean, abs=1e-12)
        assert row["valid/mean_ndcg@10-3*violation@10"] == pytest.approx(
            mean - 3.0 * row["valid/negative/violation@10"], abs=1e-12)
    values = [row["valid/mean_ndcg@10-3*violation@10"] for row in history]
    assert metrics["best_epoch"] == max(range(3), key=lambda i: (values[i], -i))
    kept = (tmp_path / "steer" / "COMPLETE").read_bytes()
    with pytest.raises(ValueError, match=r"steer.violation_weight: -1.0 must be >= 0"):
        run_stages(tiny_config(tiny_prepared, tmp_path, **{"steer.violation_weight": -1.0}), ("steer",))
    assert (tmp_path / "steer" / "COMPLETE").read_bytes() == kept  # refused before anything is written


def test_steering_gates_groupings_cover_the_same_cases(trained_run, tiny_prepared):
    """benchmarks/steering_gates.py: by tag, by seen / held-out and by template, every case of a task
    is counted once, and the statistics agree: a task's case-weighted mean gate and router weight are
    the same whichever way its cases are grouped."""
    from benchmarks.steering_gates import GROUPINGS, gate_stats
    from dpr_dist.data.prepared import load_prepared

    model, _, _ = load_model(trained_run / "steer")
    prepared = load_prepared(tiny_prepared)
    by = {g: gate_stats(model, prepared, "valid", None, g) for g in GROUPINGS}
    templates = set(prepared.prompts["template"])
    assert {group.removesuffix(" (held-out)") for _, group in by["template"]} <= templates
    assert {group for _, group in by["phrasing"]} <= {"seen", "held-out"}
    for task in ("positive", "negative"):
        totals = {}
        for g, stats in by.items():
            rows = [s for (t, _), s in stats.items() if t == task]
            n = sum(s["cases"] for s in rows)
            totals[g] = (n, sum(s["gate"] * s["cases"] for s in rows) / n,
                         sum(s["negative_weight"] * s["cases"] for s in rows) / n)
            assert all(0.0 <= s["negative_weight"] <= 1.0 for s in rows)
        assert totals["tag"][0] == totals["phrasing"][0] == totals["template"][0] > 0
        for g in ("phrasing", "template"):
            assert totals[g][1:] == pytest.approx(totals["tag"][1:], rel=1e-9)


def test_corrupt_or_partial_checkpoint_is_refused_by_name(trained_run, tmp_path):
    import shutil

    bad = tmp_path / "steer"
    shutil.copytree(trained_run / "steer", bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        load_checkpoint(bad)
    (bad / "COMPLETE").write_text('{"model.safetensors": "00"')  # marker cut short
    with pytest.raises(CheckpointError, match=f"{bad / 'COMPLETE'}:1: invalid JSON"):
        load_checkpoint(bad)
    (bad / "COMPLETE").write_text('["model.safetensors"]')
    with pytest.raises(CheckpointError, match="COMPLETE: corrupt \\(not a mapping"):
        load_checkpoint(bad)
    (bad / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="partial checkpoint"):
        load_checkpoint(bad)


def test_a_stage_in_progress_can_be_evaluated_from_its_best_epoch(tiny_prepared, tmp_path, monkeypatch):
    """best/ is a checkpoint of its own while a stage trains: the run is stopped right before its
    final write, the mid-stage checkpoint is evaluated, and the stage, finished afterwards, keeps
    exactly those weights."""
    from dpr_dist.training import loop

    def die(*args, **kwargs):
        raise KeyboardInterrupt("stopped before the final checkpoint")

    monkeypatch.setattr(loop, "finalise_checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        run_stages(tiny_config(tiny_prepared, tmp_path), ("warmup",))
    best = tmp_path / "warmup" / "best"
    state, config, metrics = load_checkpoint(best)
    history = [json.loads(line) for line in (tmp_path / "warmup" / "history.jsonl").read_text().splitlines()]
    values = [h[metrics["selected_on"]] for h in history]
    assert metrics["in_progress"] is True and metrics["epochs_run"] == len(history) >= 2
    assert metrics["best_epoch"] == max(range(len(values)), key=lambda i: (values[i], -i))
    assert config["out_dir"] == str(tmp_path)
    assert not (tmp_path / "warmup" / "COMPLETE").exists()

    assert evaluate.main(["--checkpoint", str(best), "--max-cases", "8"]) == 0
    out = tmp_path / "report-warmup-in-progress"
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["in_progress"] is True
    assert report["checkpoint"]["best_epoch"] == metrics["best_epoch"]
    assert "stage still training" in (out / "report.md").read_text()
    assert (out / "training_curves.png").is_file()  # the history beside the stage, not inside best/

    monkeypatch.undo()
    run_stages(tiny_config(tiny_prepared, tmp_path), ("warmup",))  # resumes past the last epoch, then writes
    final, _, final_metrics = load_checkpoint(tmp_path / "warmup")
    assert "in_progress" not in final_metrics and final_metrics["best_epoch"] == metrics["best_epoch"]
    assert not best.exists()
    assert final.keys() == state.keys() and all(torch.equal(final[k], state[k]) for k in final)


def test_ablation_with_other_prompt_embeddings_retrains_align_from_the_same_warmup(trained_run, tiny_prepared, tmp_path):
    """benchmarks/steer_ablation.py with another prompt encoder: the same cases and shards with wider
    prompt embeddings retrain align and steer from the source's warm-up (backbone and table kept to
    the bit); data with other cases, and a change to a warm-up-trained module, are refused."""
    from benchmarks import steer_ablation
    from data_pipeline import prepare

    def prepared(name: str, *sets: str) -> Path:
        out = tmp_path / name
        assert prepare.main(["--config", str(REPO / "configs" / "data" / "tiny-synthetic.yaml"),
                             "--set", f"output_dir={out}", "--cache-dir", str(tmp_path / "cache"),
                             *sum((["--set", s] for s in sets), [])]) == 0
        return out

    wide = prepared("wide", "encoder.dim=96")
    change = {"data_dir": str(wide), "model.prompt_dim": 96}
    assert steer_ablation.first_retrained_stage(trained_run, change) == "align"
    assert steer_ablation.first_retrained_stage(trained_run, {"data_dir": str(tiny_prepared)}) == "steer"
    with pytest.raises(SystemExit, match="which the warm-up trained"):
        steer_ablation.first_retrained_stage(trained_run, {**change, "model.num_blocks": 2})
    other = prepared("other-cases", "seed=1")
    with pytest.raises(SystemExit, match="shards, items or prompt texts differ"):
        steer_ablation.first_retrained_stage(trained_run, {"data_dir": str(other)})

    out = tmp_path / "ablation"
    assert steer_ablation.main(["--from", str(trained_run), "--out", str(out),
                                *sum((["--set", f"{k}={v}"] for k, v in change.items()), [])]) == 0
    source, _, _ = load_checkpoint(trained_run / "warmup")
    remade, config, metrics = load_checkpoint(out / "warmup")
    assert config["model"]["prompt_dim"] == 96 and metrics["remade_from"] == str(trained_run / "warmup")
    assert {key.split(".")[0] for key in metrics["reinitialised"]} == {"projection", "router"}
    steer, steer_config, _ = load_checkpoint(out / "steer")
    for key in source:
        if key.startswith(("backbone.", "item_table.")):
            assert torch.equal(source[key], remade[key]) and torch.equal(source[key], steer[key]), key
    assert steer["projection.mlp.0.weight"].shape[1] == 96
    assert steer_config["data_dir"] == str(wide)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["split"] == "test" and report["results"]["positive"]["all"]["dpr"]["ndcg@10"] >= 0
