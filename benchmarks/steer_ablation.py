"""Steer-stage ablation on a finished run: the same warm-up and align checkpoints, a model option
changed that only concerns modules no earlier stage trains, the steer stage trained again, then the
TEST-split evaluation. A/B of a steering change without hours of warm-up per arm.

    OMP_NUM_THREADS=1 python benchmarks/steer_ablation.py --from runs/bench-ml1m/sasrec-s0 \
        --out runs/gate-floor/sasrec-s0 --set model.fusion_gate_floor=0.05 --set threads=1

The align checkpoint is re-made for the changed model: every tensor whose name and shape still fit
is copied (the trained backbone, table and projection, and the initial weights of the modules only
the steer stage trains); a tensor that no longer fits must belong to a module no earlier stage
trained, and takes the changed model's seeded initialisation, as a run from scratch with the change
would have it. A change to a trained module is refused (it needs a new run). Writes
``<out>/warmup`` (copied), ``<out>/align`` (re-made: its config is the changed one, its metrics name
the source and the re-initialised tensors), ``<out>/steer`` and ``<out>/report``. Rerunning the
command skips what is up to date.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_quality import evaluate_on_test, run  # noqa: E402
from dpr_dist.common.configio import load_yaml, parse_overrides  # noqa: E402
from dpr_dist.modules import build_model  # noqa: E402
from dpr_dist.training.checkpoint import COMPLETE, load_checkpoint, save_checkpoint  # noqa: E402
from dpr_dist.training.config import TrainConfig  # noqa: E402
from dpr_dist.training.run import config_dict  # noqa: E402


def remake_align(src: Path, dst: Path, overrides: dict) -> list[str]:
    """Write ``dst`` = the align checkpoint ``src`` for the changed config; returns the re-initialised keys."""
    state, _, metrics = load_checkpoint(src)
    cfg = load_yaml(TrainConfig, src / "config.yaml", overrides)
    trained = set(cfg.warmup.train) | set(cfg.align.train)
    table = state["item_table.embedding.weight"]
    fixed = int(metrics.get("item_table_fixed_columns", 0))
    model = build_model(cfg.model, table.shape[0] - 1, seed=cfg.seed,
                        fixed_columns=table[:, table.shape[1] - fixed:] if fixed else None)
    fresh = model.state_dict()
    reinitialised, out = [], {}
    for key in sorted(set(fresh) | set(state)):
        fits = key in fresh and key in state and fresh[key].shape == state[key].shape
        if not fits and key.split(".")[0] in trained:
            raise SystemExit(f"{src}: {key} no longer fits the changed model, and an earlier stage trained it "
                             f"({key.split('.')[0]}): this change needs a new run, not a steer ablation")
        if key not in fresh:
            continue  # a tensor of an untrained module the changed model no longer has
        out[key] = state[key] if fits else fresh[key]
        if not fits:
            reinitialised.append(key)
    save_checkpoint(dst, out, config_dict(cfg), {**metrics, "remade_from": str(src), "reinitialised": reinitialised})
    return reinitialised


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="a finished run: <dir>/warmup and <dir>/align")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the change (model or steer keys)")
    args = ap.parse_args(argv)
    src, out = args.src.resolve(), args.out.resolve()
    for stage in ("warmup", "align"):
        if not (src / stage / COMPLETE).exists():
            raise SystemExit(f"--from {src}: {src / stage} is not a complete checkpoint")
    overrides = {**parse_overrides(args.set), "out_dir": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "warmup" / COMPLETE).exists():
        shutil.rmtree(out / "warmup", ignore_errors=True)
        shutil.copytree(src / "warmup", out / "warmup")
    if not (out / "align" / COMPLETE).exists():
        print(f"re-initialised for the changed model: {remake_align(src / 'align', out / 'align', overrides)}")
    log = out / "run.log"
    run([sys.executable, "-m", "launch.train", "--config", str(out / "align" / "config.yaml"), "--stage", "steer"], log)
    print(f"report: {evaluate_on_test(out, log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
