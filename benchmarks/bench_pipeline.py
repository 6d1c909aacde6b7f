"""Data pipeline benchmark: whole ML-1M preparation, MiniLM prompt encoding, shard reading.

    python benchmarks/bench_pipeline.py [--config configs/data/ml-1m.yaml] [--out /tmp/dpr-bench-ml1m]

1. Wall time of ``python -m data_pipeline.prepare`` from scratch (a fresh process, so Ray start-up
   is included), with its per-step times.
2. Prompts encoded per second by the MiniLM encoder in this process (1 thread, batches of 64, model
   loading excluded), over the prepared data set's prompt table.
3. Shard read throughput: a torch DataLoader with 2 workers over every shard of the data set
   (webdataset, shards split between workers, ``np.frombuffer`` decoding, lists of 256 samples
   per worker batch), in samples per second.

Prints one JSON line. The machine is shared: the 1-minute load average is reported with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.config import EncoderConfig  # noqa: E402
from data_pipeline.encode import MiniLMEncoder  # noqa: E402
from dpr_dist.common.schema import decode_case  # noqa: E402

STEP_LINE = re.compile(r"^\s{2}(\S.*?)\s+([0-9.]+) s$")


def bench_prepare(config: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "DPR_DATA_ROOT": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "data_pipeline.prepare", "--config", str(config), "--set", f"output_dir={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"prepare failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    steps = {m[1]: float(m[2]) for line in done.stdout.splitlines() if (m := STEP_LINE.match(line))}
    return {"prepare_wall_s": round(wall, 2), "prepare_steps_s": steps}


def bench_encoder(texts: list[str], batch_size: int = 64) -> dict:
    encoder = MiniLMEncoder(EncoderConfig().model_path, num_threads=1)
    encoder.encode(texts[:batch_size])  # warm-up: first call pays for lazy initialisation
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        encoder.encode(texts[i : i + batch_size])
    seconds = time.perf_counter() - start
    return {"minilm_prompts": len(texts), "minilm_prompts_per_s": round(len(texts) / seconds, 1)}


def _keep_as_is(batch: list) -> list:
    return batch


def bench_read(urls: list[str], workers: int = 2, batch: int = 256) -> dict:
    import torch
    import webdataset as wds

    # Batches are formed inside the workers: sending every sample through the DataLoader's queue
    # on its own costs ~1 ms of IPC each (measured here: ~640 samples/s instead of thousands).
    # Histories differ in length, so a batch stays a list of (hist, case) arrays.
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
        .map(decode_case)
        .batched(batch, collation_fn=list)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_keep_as_is)
    start = time.perf_counter()
    samples = sum(len(b) for b in loader)
    seconds = time.perf_counter() - start
    return {"shard_read_samples": samples, "shard_read_samples_per_s": round(samples / seconds),
            "loader_workers": workers, "loader_batch": batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "data" / "ml-1m.yaml"))
    parser.add_argument("--out", default="/tmp/dpr-bench-ml1m", help="scratch output (deleted first)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()

    result = {"config": Path(args.config).name, **bench_prepare(Path(args.config).resolve(), out)}
    manifest = json.loads((out / "manifest.json").read_text())
    import pandas as pd

    result.update(
        users=manifest["counts"]["users"],
        interactions=manifest["counts"]["interactions"],
        shards=len(manifest["shards"]),
        samples=sum(e["count"] for e in manifest["shards"].values()),
        shard_bytes=sum(e["bytes"] for e in manifest["shards"].values()),
    )
    result.update(bench_encoder(pd.read_parquet(out / "prompts.parquet")["text"].tolist()))
    result.update(bench_read([str(out / relpath) for relpath in sorted(manifest["shards"])]))
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
