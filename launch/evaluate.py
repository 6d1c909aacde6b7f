"""Evaluate a stage checkpoint: every task, every baseline, full ranking; writes the report.

    python -m launch.evaluate --checkpoint runs/ml-100k/steer --out runs/ml-100k/report

While a stage still trains, ``runs/<name>/<stage>/best`` holds its best epoch so far as a checkpoint
of its own (metrics say ``in_progress``); evaluating it writes ``runs/<name>/report-<stage>-in-progress``
by default, beside the final report rather than over it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dpr_dist.common import schema
from dpr_dist.data.prepared import load_prepared
from dpr_dist.eval import plots
from dpr_dist.eval.evaluate import evaluate_checkpoint
from dpr_dist.eval.report import build_report, write_report
from dpr_dist.training.loop import STAGE_ORDER
from dpr_dist.training.run import load_model, popularity


def training_history(run_dir: Path) -> list[dict]:
    """Per-epoch rows of every stage found beside the checkpoint (for the training-curve plot)."""
    rows = []
    for stage in STAGE_ORDER:
        path = run_dir / stage / "history.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _curve_rows(history: list[dict]) -> list[dict]:
    keep = ("train/loss", "valid/standard/ndcg@10", "valid/mean_ndcg@10", "valid/held_out/top1",
            "valid/positive/ndcg@10", "valid/negative/ndcg@10")
    return [{"stage": r["stage"], "epoch": r["epoch"], **{k: r[k] for k in keep if k in r}} for r in history]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a stage checkpoint directory (e.g. runs/x/steer)")
    ap.add_argument("--data-dir", help="prepared data (default: the checkpoint config's data_dir)")
    ap.add_argument("--out", help="report directory (default: <checkpoint>/../report)")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--max-cases", type=int, default=None, help="evaluate the first N cases of each task")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    ckpt = Path(args.checkpoint)
    model, cfg, stage_metrics = load_model(ckpt)
    prepared = load_prepared(args.data_dir or cfg.data_dir)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    counts = popularity(prepared)
    results, sizes, reranks = evaluate_checkpoint(
        model, prepared, counts, split=args.split, ks=tuple(cfg.eval.ks),
        rerank_depths=tuple(cfg.eval.rerank_depths), rerank_grid=cfg.eval.rerank_grid,
        max_cases=args.max_cases or cfg.eval.max_cases, batch_size=cfg.eval.batch_size,
    )
    in_progress = bool(stage_metrics.get("in_progress"))
    run_dir = ckpt.parent.parent if in_progress else ckpt.parent  # <run>/<stage>/best mid-stage
    default_out = run_dir / (f"report-{stage_metrics.get('stage')}-in-progress" if in_progress else "report")
    out = Path(args.out) if args.out else default_out
    report = build_report(
        results, config={"train": dataclasses.asdict(cfg), "evaluate": vars(args)}, seed=cfg.seed,
        manifest_path=Path(prepared.root) / schema.MANIFEST_NAME, subset_sizes=sizes,
    )
    report["split"] = args.split
    report["checkpoint"] = {"path": str(ckpt), "stage": stage_metrics.get("stage"),
                            "best_epoch": stage_metrics.get("best_epoch"),
                            "selected_on": stage_metrics.get("selected_on"), "in_progress": in_progress,
                            "epochs_run": stage_metrics.get("epochs_run")}
    report["rerank_tuning"] = reranks
    json_path, md_path = write_report(out, report)
    history = training_history(run_dir)
    pictures = []
    if history:
        pictures.append(plots.plot_training_curves(_curve_rows(history), out / "training_curves.png"))
    if schema.TASK_POSITIVE in results:
        try:
            pictures.append(plots.plot_steering_gains(results, out / "steering_gains.png",
                                                      schema.TASK_POSITIVE, "dpr", "hard_filter"))
        except ValueError as exc:  # e.g. every per-tag hard-filter score is 0 on a tiny run
            print(f"[evaluate] no steering-gain plot: {exc}")
    for task, subsets in results.items():
        row = subsets["all"]
        print(f"[evaluate] {task:9s} " + "  ".join(
            f"{m}={v.get('ndcg@10', float('nan')):.4f}" for m, v in row.items()))
    print(f"[evaluate] report: {md_path} ({json_path.name}, {', '.join(p.name for p in pictures)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
