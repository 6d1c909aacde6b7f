"""Wall time and peak memory of synthetic data generation, printed as one JSON line.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthetic.py --num-items 10000000
    OMP_NUM_THREADS=1 python benchmarks/bench_synthetic.py --num-items 2000000 --num-users 20000 --normalise

``--normalise`` also reads the tables back (the Ray job's ingest step) and normalises them with
``catalogue: all_items``, the two in-driver steps whose memory bounds the catalogue size the
preparation job can handle.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.config import DataConfig, SyntheticConfig  # noqa: E402
from data_pipeline.ingest.synthetic import generate, load  # noqa: E402
from data_pipeline.normalise import normalise  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=10_000_000)
    parser.add_argument("--num-users", type=int, default=defaults.num_users)
    parser.add_argument("--mean-user-len", type=int, default=defaults.mean_user_len)
    parser.add_argument("--chunk-rows", type=int, default=defaults.chunk_rows)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    parser.add_argument("--normalise", action="store_true", help="then ingest and normalise (all_items catalogue)")
    args = parser.parse_args(argv)
    cfg = SyntheticConfig(
        num_items=args.num_items, num_users=args.num_users, mean_user_len=args.mean_user_len, chunk_rows=args.chunk_rows
    )
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.out_dir or Path(scratch)
        start = time.perf_counter()
        events_path, items_path = generate(cfg, out_dir, args.seed)
        seconds = time.perf_counter() - start
        sizes = {"events_mb": events_path.stat().st_size / 2**20, "items_mb": items_path.stat().st_size / 2**20}
        result = {
            "num_items": cfg.num_items, "num_users": cfg.num_users, "mean_user_len": cfg.mean_user_len,
            "chunk_rows": cfg.chunk_rows, "seconds": round(seconds, 2), "peak_rss_mb": round(_peak_mb(), 1),
            **{k: round(v, 1) for k, v in sizes.items()},
        }
        if args.normalise:
            start = time.perf_counter()
            raw = load(cfg, out_dir, args.seed)
            result.update(ingest_seconds=round(time.perf_counter() - start, 2), ingest_peak_rss_mb=round(_peak_mb(), 1))
            start = time.perf_counter()
            catalog = normalise(raw, DataConfig(catalogue="all_items"))
            result.update(normalise_seconds=round(time.perf_counter() - start, 2), normalise_peak_rss_mb=round(_peak_mb(), 1),
                          catalogue_items=catalog.num_items)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
