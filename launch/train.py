"""Train the DPR stages: ``python -m launch.train --config configs/train/<name>.yaml``.

One process here; the same entry point is what ``deepspeed launch/train.py`` runs on several ranks.
"""

from __future__ import annotations

import argparse
import sys

from dpr_dist.common.configio import load_yaml, parse_overrides
from dpr_dist.training.config import TrainConfig
from dpr_dist.training.loop import STAGE_ORDER


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help="configs/train/<name>.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set warmup.epochs=2 (repeatable)")
    ap.add_argument("--stage", action="append", choices=[*STAGE_ORDER, "all"],
                    help="stage(s) to run (default: all, in order); a later stage starts from the "
                         "previous stage's checkpoint in out_dir")
    ap.add_argument("--device", help="cpu or cuda (overrides the config)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = parse_overrides(args.overrides)
    if args.device:
        overrides["device"] = args.device
    cfg = load_yaml(TrainConfig, args.config, overrides)
    stages = STAGE_ORDER if not args.stage or "all" in args.stage else tuple(args.stage)
    from dpr_dist.training.run import run_stages  # heavy imports after argument errors

    results = run_stages(cfg, stages)
    for name, res in results.items():
        print(f"{name}: best epoch {res.best_epoch}, valid {res.metric_name} = {res.best_metric:.4f} "
              f"({res.seconds:.0f} s) -> {res.checkpoint}")
    return 0


if __name__ == "__main__":
    from dpr_dist.distributed.env import run_rank  # ends a rank without the gloo shutdown race

    run_rank(main)
