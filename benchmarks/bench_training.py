"""Warm-up training throughput: our loop against a plain full-softmax PyTorch loop, same settings.

    OMP_NUM_THREADS=1 python benchmarks/bench_training.py --data-dir data/ml-1m --max-len 200

Settings follow ENV_NOTES' reference table (SASRec d=64, 2 blocks, 1 head, batch 128). Variants:
- ``plain``: explicit softmax(QK^T)V attention, full softmax over the catalogue, nn.Embedding + Adam
  (what a straightforward PyTorch SASRec does; the reference the goal is stated against);
- ``fused-full``: our path, fused scaled_dot_product_attention, full softmax, row-wise Adagrad table;
- ``fused-sampled``: our path with the sampled softmax (logQ-corrected, 256 shared negatives).
Prints one JSON line per variant: the mean step over ``--steps`` steps (default: one whole epoch),
sequences/s and the implied seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpr_dist.common import schema  # noqa: E402
from dpr_dist.data.prepared import load_prepared  # noqa: E402
from dpr_dist.data.reader import shard_loader  # noqa: E402
from dpr_dist.modules import ModelConfig, build_model  # noqa: E402
from dpr_dist.training.config import StageConfig  # noqa: E402
from dpr_dist.training.objectives import warmup_loss  # noqa: E402
from dpr_dist.training.run import build_context, popularity  # noqa: E402
from dpr_dist.training.runtime import LocalStageTrainer  # noqa: E402


def run_variant(name: str, prepared, args) -> dict:
    attention = "reference" if name == "plain" else "fused"
    cfg = ModelConfig(hidden=64, max_len=args.max_len, num_blocks=2, num_heads=1, dropout=0.2,
                      attention_impl=attention, prompt_dim=int(prepared.prompt_embeddings.shape[1]))
    torch.manual_seed(0)
    model = build_model(cfg, prepared.num_items)
    stage = StageConfig(loss="sampled" if name == "fused-sampled" else "full", num_negatives=256,
                        train=["backbone", "item_table"])
    ctx = build_context(prepared, popularity(prepared), "cpu")
    if name == "plain":
        # The straightforward loop: score the whole catalogue at every position, one Adam.
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(batch):
            H = model.encode_history(batch["hist"]).H
            keep = batch["labels"] > 0
            scores = model.item_table.score_all(H[keep])
            loss = torch.nn.functional.cross_entropy(scores[:, 1:], batch["labels"][keep] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        trainer = LocalStageTrainer(model, stage)

        def step(batch):
            trainer.step(warmup_loss, batch, ctx)
    loader = shard_loader(prepared, "train", schema.STAGE_WARMUP, global_batch=args.batch_size,
                          max_len=args.max_len, seed=0, shuffle=True)
    steps = args.steps or len(loader)
    batches = []
    while len(batches) < steps + args.warmup_steps:  # the warm-up steps come from a second epoch
        for batch in loader:
            batches.append(batch)
            if len(batches) >= steps + args.warmup_steps:
                break
    batches = batches[steps:] + batches[:steps]  # untimed steps first, then a whole epoch in order
    model.train()
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        step(batch)
        if i >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    users = loader.dataset.num_samples
    return {
        "variant": name, "max_len": args.max_len, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "timed_steps": len(times), "mean_step_s": round(mean, 4), "sequences_per_s": round(args.batch_size / mean, 1),
        "epoch_s": round(mean * len(loader), 1), "users": users, "items": prepared.num_items,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: one whole epoch)")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    ap.add_argument("--variants", default="plain,fused-full,fused-sampled")
    args = ap.parse_args(argv)
    prepared = load_prepared(args.data_dir)
    for name in args.variants.split(","):
        print(json.dumps(run_variant(name, prepared, args)), flush=True)


if __name__ == "__main__":
    main()
