"""Warm-up training throughput on a prepared data set: the single-process reference path against
the distributed path (launch/train.py under torchrun: TorchRec row-wise sharded table, DeepSpeed
engine for the dense modules) on 1 and 2 ranks: same global batch, same sampled softmax, same
capped number of steps.

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed_throughput.py --data-dir data/ml-1m

The distributed loss is the sampled softmax (a full softmax would train a sharded table only through
the chunked shard-local normaliser, which the runtime refuses on trainable tables), so every run
here uses it. One JSON line per run: seconds per step (mean over the run, first step included),
sequences per second, peak RSS per rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warmup_runs import REPO, emit, warmup_run  # noqa: E402

from dpr_dist.common.schema import read_manifest  # noqa: E402

RUNS = (("reference", 1), ("distributed", 1), ("distributed", 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO / "data/ml-1m")
    ap.add_argument("--config", type=Path, default=REPO / "configs/train/ml-1m.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-distributed")
    ap.add_argument("--out", type=Path, help="append the JSON lines here too")
    args = ap.parse_args(argv)
    # Warm-up never reads a prompt, but training refuses a model whose prompt width is not the data's.
    prompt_dim = read_manifest(args.data_dir)["encoder"]["dim"]
    sets = [f"data_dir={args.data_dir.resolve()}", f"model.prompt_dim={prompt_dim}", "warmup.loss=sampled",
            f"warmup.num_negatives={args.negatives}", "warmup.epochs=1", f"warmup.max_steps_per_epoch={args.steps}",
            f"warmup.batch_size={args.batch}", "warmup.eval_max_cases=256", "checkpoint_every_steps=0", "threads=1"]
    for mode, world in RUNS:
        row = warmup_run(args.work.resolve() / f"{mode}-{world}", args.config, sets, mode, world, 29500 + world)
        if "seconds_per_step" in row:
            row["sequences_per_s"] = round(args.batch / row["seconds_per_step"], 1)
        emit({"bench": "distributed_throughput", "data": str(args.data_dir), **row}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
