"""The main job end to end: data preparation (Ray), the three training stages, the evaluation report.

    python -m launch.run_all --data-config configs/data/ml-100k.yaml --train-config configs/train/ml-100k.yaml

Each step skips work that is already done and up to date (prepared data with the same config;
nothing is skipped in training: a new run overwrites the stage checkpoints of ``out_dir``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline import prepare
from dpr_dist.common.configio import load_yaml, parse_overrides
from data_pipeline.config import DataConfig
from launch import evaluate, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-config", default="configs/data/ml-100k.yaml")
    ap.add_argument("--train-config", default="configs/train/ml-100k.yaml")
    ap.add_argument("--set-data", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--set-train", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    print("== 1/3 data preparation", flush=True)
    rc = prepare.main(["--config", args.data_config, *sum((["--set", s] for s in args.set_data), [])])
    if rc:
        return rc
    data_cfg = prepare.resolve_paths(
        load_yaml(DataConfig, args.data_config, parse_overrides(args.set_data)), prepare.data_root()
    )
    data_dir = data_cfg.output_dir

    print("== 2/3 training: warm-up, align, steer", flush=True)
    train_sets = [f"data_dir={data_dir}", *args.set_train]
    rc = train.main(["--config", args.train_config, *sum((["--set", s] for s in train_sets), [])])
    if rc:
        return rc
    from dpr_dist.training.config import TrainConfig

    out_dir = Path(load_yaml(TrainConfig, args.train_config, parse_overrides(train_sets)).out_dir)

    print("== 3/3 evaluation", flush=True)
    return evaluate.main(["--checkpoint", str(out_dir / "steer"), "--data-dir", data_dir,
                          "--out", str(out_dir / "report"), "--split", args.split])


if __name__ == "__main__":
    sys.exit(main())
