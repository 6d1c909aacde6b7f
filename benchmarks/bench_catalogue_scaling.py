"""Catalogue scaling: the warm-up stage on synthetic catalogues of 1M, 10M and 20M items (d=64),
the item table sharded row-wise over 2 ranks (torchrun) against the single-process reference path.

    OMP_NUM_THREADS=1 python benchmarks/bench_catalogue_scaling.py --sizes 1000000 10000000 20000000

For each size: the synthetic data set is prepared by the real Ray job (``catalogue: all_items``, so
the catalogue is the whole generated item table, not just the items some user consumed; hash
prompt encoder, no item-text embeddings), then ``launch/train.py --stage warmup`` trains a capped
number of sampled-softmax steps and validates on a few hundred cases (shard-local ranking over the
whole catalogue). Reported per run: peak RSS of each rank (``metrics.json``), seconds per training
step, wall time. A run that fails (e.g. out of memory) is reported as such: the largest size that
trains is the answer to "how large a catalogue fits on this machine". One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warmup_runs import MODES, REPO, emit, warmup_run  # noqa: E402


def prepare(items: int, args) -> Path:
    out = args.work / f"data-{items}"
    sets = {
        "name": f"synthetic-{items}", "output_dir": str(out), "catalogue": "all_items",
        "source.format": "synthetic", "source.synthetic.num_items": items, "source.synthetic.num_users": args.users,
        "source.synthetic.num_tags": 18, "source.synthetic.mean_user_len": 20, "source.synthetic.min_user_len": 5,
        "encoder.kind": "hash", "encoder.dim": 64, "encoder.encode_item_texts": "false",
        "samples_per_shard": 5000, "num_partitions": 4, "steer_cases_per_user": 1,
    }
    cmd = [sys.executable, "-m", "data_pipeline.prepare", "--config", str(REPO / "configs/data/synthetic-10m.yaml"),
           *sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])]
    started = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"preparation of {items} items failed:\n{done.stderr[-3000:]}")
    print(json.dumps({"bench": "prepare", "items": items, "seconds": round(time.time() - started, 1)}), flush=True)
    return out


def train(items: int, data: Path, mode: str, args) -> dict:
    sets = [f"data_dir={data}", "model.hidden=64", "model.prompt_dim=64", "model.max_len=20",
            "warmup.loss=sampled", f"warmup.num_negatives={args.negatives}", "warmup.epochs=1",
            f"warmup.max_steps_per_epoch={args.steps}", f"warmup.batch_size={args.batch}",
            f"warmup.eval_max_cases={args.eval_cases}", "checkpoint_every_steps=0", "threads=1"]
    row = warmup_run(args.work / f"run-{items}-{mode}", REPO / "configs/train/tiny.yaml", sets,
                     mode, args.world, 29400 + items % 1000)
    return {"bench": "catalogue_scaling", "items": items, "table_mib": round((items + 1) * 64 * 4 / 2**20, 1), **row}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 20_000_000])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--eval-cases", type=int, default=256)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-catalogue")
    ap.add_argument("--out", type=Path, help="append the JSON lines here too")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    for items in args.sizes:
        data = prepare(items, args)
        for mode in args.modes:
            emit(train(items, data, mode, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
