"""Catalogue scaling: the item table sharded row-wise over 2 ranks vs one unsharded process.

For each catalogue size (synthetic: random ids, d=64) it measures peak RSS per process and the time
of one sampled-softmax training step that reads the table three times (history, positives,
negatives) and updates it with row-wise Adagrad:
  - single:  PlainItemTable (sparse gradients) + dpr_dist.optim.RowWiseAdagrad, the GLOBAL batch;
  - sharded: ShardedItemTable row-wise on 2 gloo ranks (torchrun), each rank its half of the batch,
             fused row-wise Adagrad via apply_gradients().
One JSON line per size on stdout (and appended to --out):

    OMP_NUM_THREADS=1 python benchmarks/bench_sharded_catalogue.py --sizes 1000000 10000000 20000000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_loss(table, step: int, slices: list[int], args) -> "torch.Tensor":
    import torch

    from dpr_dist.losses import sampled_softmax_logq

    log_q = torch.full((args.items + 1,), -math.log(args.items))
    total = 0.0
    for r in slices:
        g = torch.Generator().manual_seed(1000 * step + r)
        history = torch.randint(1, args.items + 1, (args.batch, args.history), generator=g)
        positives = torch.randint(1, args.items + 1, (args.batch,), generator=g)
        negatives = torch.randint(1, args.items + 1, (args.negatives,), generator=g)
        u = table.lookup(history).mean(1)
        total = total + sampled_softmax_logq(u, positives, table, args.negatives, log_q, negative_ids=negatives)
    return total / len(slices)


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    base = current_rss_mib()
    started = time.time()
    if args.worker == "single":
        from dpr_dist.modules.item_table import PlainItemTable
        from dpr_dist.optim.rowwise_adagrad import RowWiseAdagrad

        table = PlainItemTable(args.items, args.dim, sparse=True)
        opt = RowWiseAdagrad(table.parameters(), lr=0.05)
        slices, rank = list(range(args.world)), 0

        def one_step(step: int) -> None:
            opt.zero_grad(set_to_none=True)
            step_loss(table, step, slices, args).backward()
            opt.step()
    else:
        import torch.distributed as dist

        from dpr_dist.distributed.env import init_distributed
        from dpr_dist.distributed.sharded_table import ShardedItemTable

        init_distributed("cpu", timeout_minutes=10, deepspeed_comm=False)
        table = ShardedItemTable(args.items, args.dim, sharding="row_wise", lr=0.05)
        rank = dist.get_rank()
        slices = [rank]

        def one_step(step: int) -> None:
            step_loss(table, step, slices, args).backward()
            table.apply_gradients()
    setup_s = time.time() - started
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.time()
        one_step(step)
        if step >= args.warmup:
            times.append(time.time() - t0)
    Path(args.result_dir, f"{args.worker}_r{rank}.json").write_text(json.dumps({
        "mode": args.worker, "rank": rank, "items": args.items, "setup_s": round(setup_s, 2),
        "step_s_median": round(statistics.median(times), 4), "step_s_all": [round(t, 4) for t in times],
        "rss_before_table_mib": round(base, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
    }))
    if args.worker == "sharded":
        dist.barrier()
        dist.destroy_process_group()


def launch(args, worker: str, items: int) -> list[dict]:
    result_dir = Path(tempfile.mkdtemp(prefix="bench_sharded_"))
    common = [str(Path(__file__).resolve()), "--worker", worker, "--result-dir", str(result_dir), "--items", str(items), "--dim", str(args.dim),
              "--batch", str(args.batch), "--history", str(args.history), "--negatives", str(args.negatives),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--world", str(args.world)]
    if worker == "single":
        cmd = [sys.executable, *common]
    else:
        from dpr_dist.distributed.env import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(args.world),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *common]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    found = [json.loads(p.read_text()) for p in sorted(result_dir.glob(f"{worker}_r*.json"))]
    if proc.returncode != 0 or not found:
        return [{"mode": worker, "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-1500:]}]
    return sorted(found, key=lambda r: r["rank"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 20_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256, help="per-rank batch (the single process runs world x this)")
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--skip-single", action="store_true", help="only the sharded run (when one process cannot hold the table)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    ap.add_argument("--worker", choices=["single", "sharded"], help=argparse.SUPPRESS)
    ap.add_argument("--items", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(args)
        return 0
    for items in args.sizes:
        row = {"bench": "sharded_catalogue", "items": items, "dim": args.dim, "world": args.world,
               "table_mib_full": round((items + 1) * args.dim * 4 / 2**20, 1),
               "per_rank_batch": args.batch, "history": args.history, "negatives": args.negatives}
        row["single"] = None if args.skip_single else launch(args, "single", items)[0]
        row["sharded"] = launch(args, "sharded", items)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
