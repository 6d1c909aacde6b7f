"""Wall time and peak memory of synthetic data generation, printed as one JSON line.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthetic.py --num-items 10000000
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

from data_pipeline.config import SyntheticConfig  # noqa: E402
from data_pipeline.ingest.synthetic import generate  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=10_000_000)
    parser.add_argument("--num-users", type=int, default=defaults.num_users)
    parser.add_argument("--mean-user-len", type=int, default=defaults.mean_user_len)
    parser.add_argument("--chunk-rows", type=int, default=defaults.chunk_rows)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: a temporary directory, removed after")
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
    # ru_maxrss is in KiB on Linux.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "num_items": cfg.num_items, "num_users": cfg.num_users, "mean_user_len": cfg.mean_user_len,
        "chunk_rows": cfg.chunk_rows, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1),
        **{k: round(v, 1) for k, v in sizes.items()},
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
