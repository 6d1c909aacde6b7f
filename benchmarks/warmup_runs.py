"""Shared by the distributed benchmarks: one capped warm-up run of launch/train.py, either the
single-process reference path or torchrun with N ranks, and the figures its metrics.json records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("reference", "distributed")


def warmup_run(out: Path, config: Path, sets: list[str], mode: str, world: int, port: int) -> dict:
    """Train the warm-up stage into ``out``; returns wall time, peak RSS per rank, s/step (or the error)."""
    train_args = ["--config", str(config), "--stage", "warmup", "--set", f"out_dir={out}",
                  *sum((["--set", s] for s in sets), [])]
    if mode == "reference":
        cmd = [sys.executable, "-m", "launch.train", *train_args, "--set", "distributed.mode=reference"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
               "127.0.0.1", "--master_port", str(port), str(REPO / "launch/train.py"), *train_args,
               "--set", "distributed.mode=distributed"]
    started = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    row = {"mode": mode, "world": 1 if mode == "reference" else world, "wall_s": round(time.time() - started, 1)}
    if done.returncode:
        # The launcher's own traceback buries the rank's: keep all of stderr beside the run.
        log = out.parent / f"{out.name}.stderr.log"
        log.write_text(done.stderr)
        causes = [line for line in done.stderr.splitlines() if "Error" in line and "ChildFailedError" not in line]
        return {**row, "error": f"exit {done.returncode}", "cause": causes[:3], "stderr": str(log)}
    metrics = json.loads((out / "warmup" / "metrics.json").read_text())
    return {**row, "peak_rss_mib_per_rank": metrics["peak_rss_mib_per_rank"],
            "seconds_per_step": metrics["seconds_per_step"], "valid_ndcg@10": metrics["best_metric"]}


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")
