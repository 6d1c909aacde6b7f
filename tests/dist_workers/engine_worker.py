"""DeepSpeed engine (dense part) + ShardedItemTable, a few steps, checked against a single-process
reference that every rank computes for the global batch. Launched by the deepspeed launcher:

    deepspeed --num_accelerators 2 engine_worker.py --out DIR --zero 2 [--fail exit|hang|hang-in-step]

--fail: rank 1 exits before the set-up barrier (exit), sleeps there (hang), or sleeps after the first
step while rank 0 waits in a collective (hang-in-step). Rank 0 must then fail within the timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import recipe
from dpr_dist.distributed.engine import build_dense_engine
from dpr_dist.distributed.env import barrier_or_fail, collective_guard, init_distributed, run_rank
from dpr_dist.distributed.sharded_table import ShardedItemTable
from dpr_dist.losses import sampled_softmax_logq
from dpr_dist.modules.item_table import PlainItemTable
from dpr_dist.optim.rowwise_adagrad import RowWiseAdagrad
from dpr_dist.training.config import StageConfig
from dpr_dist.training.freeze import apply_freeze, named_trainable_dense

STEPS = 3
STAGE = StageConfig(batch_size=recipe.WORLD * recipe.LOCAL_BATCH, lr=1e-2, weight_decay=0.01, item_lr=recipe.LR,
                    grad_clip=0.05, train=["backbone", "item_table"])


class TinyModel(nn.Module):
    """u = projection(relu(backbone(user features))) + mean of the history embeddings."""

    def __init__(self, item_table) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.backbone = nn.Linear(recipe.DIM, recipe.DIM)
        self.projection = nn.Linear(recipe.DIM, recipe.DIM)
        self.item_table = item_table

    def forward(self, b: recipe.Batch) -> torch.Tensor:
        return self.projection(torch.relu(self.backbone(b.user))) + self.item_table.lookup(b.history).mean(1)


def loss_of(model: nn.Module, forward, b: recipe.Batch) -> torch.Tensor:
    return sampled_softmax_logq(forward(b), b.positives, model.item_table, b.negatives, recipe.item_log_q()).mean()


def reference_run() -> tuple[nn.Module, list[float]]:
    table = PlainItemTable(recipe.NUM_ITEMS, recipe.DIM)
    with torch.no_grad():
        table.embedding.weight.copy_(recipe.init_weight())
    model = TinyModel(table)
    apply_freeze(model, STAGE.train)
    dense = [p for _, p in named_trainable_dense(model)]
    dense_opt = torch.optim.AdamW(dense, lr=STAGE.lr, weight_decay=STAGE.weight_decay)
    table_opt = RowWiseAdagrad(table.parameters(), lr=STAGE.item_lr, eps=recipe.EPS)
    norms = []
    for step in range(STEPS):
        dense_opt.zero_grad()
        table_opt.zero_grad()
        (sum(loss_of(model, model, recipe.batch(step, r)) for r in range(recipe.WORLD)) / recipe.WORLD).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(dense, STAGE.grad_clip)))
        dense_opt.step()
        table_opt.step()
    return model, norms


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--zero", type=int, default=0)
    parser.add_argument("--timeout-minutes", type=float, default=1.0)
    parser.add_argument("--fail", choices=["none", "exit", "hang", "hang-in-step"], default="none")
    parser.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = init_distributed("cpu", timeout_minutes=args.timeout_minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        run(args, info.rank)
    except Exception as exc:  # recorded for the test, then re-raised so the rank exits non-zero
        (args.out / f"error_r{info.rank}.json").write_text(
            json.dumps({"type": type(exc).__name__, "message": str(exc), "seconds": time.time() - started})
        )
        raise
    return 0  # run_rank destroys the process group


def run(args, rank: int) -> None:
    if args.fail == "exit" and rank == 1:
        sys.exit(0)
    if args.fail == "hang" and rank == 1:
        time.sleep(600)
    barrier_or_fail("model set-up", timeout_seconds=args.timeout_minutes * 60)

    table = ShardedItemTable(recipe.NUM_ITEMS, recipe.DIM, lr=STAGE.item_lr, eps=recipe.EPS, seed=recipe.SEED)
    model = TinyModel(table)
    apply_freeze(model, STAGE.train)
    engine = build_dense_engine(model, STAGE, zero_stage=args.zero)
    losses = []
    for step in range(STEPS):
        if args.fail == "hang-in-step" and rank == 1 and step == 1:
            time.sleep(600)
        with collective_guard(f"training step {step}"):
            loss = loss_of(model, lambda b: engine(lambda m, x: m(x), b), recipe.batch(step, rank))
            engine.backward(loss)
            table.apply_gradients()
            engine.step()
        losses.append(float(loss.detach()))

    ref_model, ref_norms = reference_run()
    dense = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("item_table")}
    if args.zero == 3:  # ZeRO-3 keeps partitions: gather the full parameters to compare
        from deepspeed.utils import safe_get_full_fp32_param

        dense.update({f"backbone.{n}": safe_get_full_fp32_param(p).clone() for n, p in model.backbone.named_parameters()})
    ref_dense = {n: p.detach() for n, p in ref_model.named_parameters() if not n.startswith("item_table")}
    table_weight = table.full_weight()
    result = {
        "losses": losses,
        "dense_err": max((dense[n] - ref_dense[n]).abs().max().item() for n in ref_dense),
        "table_err": (table_weight - ref_model.item_table.embedding.weight.detach()).abs().max().item(),
        "reference_grad_norms": ref_norms,
        "dense_digest": digest(torch.cat([dense[n].flatten() for n in sorted(dense)])),
        "table_digest": digest(table_weight),
        "projection_unchanged": bool(torch.equal(dense["projection.weight"], ref_dense["projection.weight"])),
        "gradient_clipping": engine.gradient_clipping(),
    }
    (args.out / f"result_r{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    run_rank(main)
