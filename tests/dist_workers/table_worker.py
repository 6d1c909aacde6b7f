"""Runs a ShardedItemTable scenario on every rank and writes tensors for the test to compare.

    torchrun --nproc_per_node 2 table_worker.py train --sharding row_wise --out DIR [--negative-control]
    torchrun --nproc_per_node N table_worker.py load  --sharding table_wise --ckpt DIR --out DIR

Files: <name>.safetensors (rank 0, full table exports), <name>_r<rank>.safetensors (per rank),
losses_r<rank>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import recipe
from dpr_dist.distributed.env import init_distributed, run_rank
from dpr_dist.distributed.sharded_table import ShardedItemTable
from dpr_dist.distributed.export import export_model
from dpr_dist.distributed.table_checkpoint import load_table, save_table


def make_table(sharding: str, **kwargs) -> ShardedItemTable:
    return ShardedItemTable(recipe.NUM_ITEMS, recipe.DIM, sharding=sharding, lr=recipe.LR, eps=recipe.EPS, **kwargs)


def train_step(table: ShardedItemTable, step: int, user_param: torch.Tensor | None = None) -> float:
    """One step of the global batch: this rank's slices are batch(step, r) for r = rank, rank + world..."""
    world, rank = dist.get_world_size(), dist.get_rank()
    slices = range(rank, recipe.WORLD, world)
    # mean over the global batch's slices = (sum of slice losses) / WORLD * world after TorchRec's / world
    loss = sum(recipe.loss(table, recipe.batch(step, r), user_param) for r in slices) * world / recipe.WORLD
    loss.backward()
    table.apply_gradients()
    return float(loss.detach())


def save_rank(out: Path, name: str, tensors: dict) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}_r{dist.get_rank()}.safetensors"))


def run_train(args, out: Path) -> None:
    table = make_table(args.sharding, seed=recipe.SEED)
    export_model({}, table, out / "w_init.safetensors")
    with torch.no_grad():
        save_rank(out, "lookup", {"history": table.lookup(recipe.batch(0, dist.get_rank()).history)})
    losses = [train_step(table, t) for t in range(recipe.STEPS)]
    export_model({}, table, out / "w_trained.safetensors")

    values, ids = table.topk(recipe.queries(), 10, recipe.query_history())
    with torch.no_grad():
        scores = table.score_all(recipe.queries())
    centroid_sums = table.weighted_rows(recipe.tag_weights())
    save_rank(out, "topk", {"values": values, "ids": ids, "scores": scores, "centroid_sums": centroid_sums})
    try:
        table.score_all(recipe.queries())
        refusal = ""
    except RuntimeError as exc:
        refusal = str(exc)

    save_table(table, out / "ckpt")
    losses.append(train_step(table, recipe.STEPS))
    export_model({}, table, out / "w_extra.safetensors")

    table.frozen = True
    user = torch.zeros(recipe.LOCAL_BATCH, recipe.DIM, requires_grad=True)
    frozen_losses = [train_step(table, recipe.STEPS + 1 + t, user) for t in range(2)]
    export_model({}, table, out / "w_frozen.safetensors")
    save_rank(out, "frozen_user_grad", {"grad": user.grad})

    table.frozen = False
    edge = edge_cases(table)

    if args.negative_control:  # the same steps with one fused update per lookup instead of per step
        direct = make_table(args.sharding, seed=recipe.SEED, deferred_update=False)
        for t in range(recipe.STEPS):
            recipe.loss(direct, recipe.batch(t, dist.get_rank())).backward()
        export_model({}, direct, out / "w_direct.safetensors")
    (out / f"losses_r{dist.get_rank()}.json").write_text(
        json.dumps({"losses": losses, "frozen_losses": frozen_losses, "score_all_refusal": refusal, **edge})
    )


def edge_cases(table: ShardedItemTable) -> dict:
    """Rank 1 looks up only padding (nothing reaches TorchRec) while rank 0 trains; then a second
    lookup after a backward without apply_gradients() must be refused (on every rank alike)."""
    ids = torch.tensor([[3, 4]]) if dist.get_rank() == 0 else torch.tensor([[0, 0]])
    table.lookup(ids).sum().backward()
    sent = table.apply_gradients()
    table.lookup(torch.tensor([5])).sum().backward()
    try:
        table.lookup(torch.tensor([6]))
        stale = ""
    except RuntimeError as exc:
        stale = str(exc)
    table.apply_gradients()
    return {"padding_only_ids_sent": sent, "stale_refusal": stale}


def run_load(args, out: Path) -> None:
    table = make_table(args.sharding, init_weight=torch.full((recipe.NUM_ITEMS + 1, recipe.DIM), 0.5))
    export_model({}, table, out / "w_before.safetensors")
    load_table(table, args.ckpt)
    export_model({}, table, out / "w_loaded.safetensors")
    train_step(table, recipe.STEPS)
    export_model({}, table, out / "w_extra.safetensors")


def run_columns(args, out: Path) -> None:
    """Column-wise sharding really splits columns only from d=256 (the planner's shards are 128 wide)."""
    table = ShardedItemTable(recipe.NUM_ITEMS, recipe.WIDE_DIM, sharding="column_wise", seed=recipe.SEED)
    queries = torch.randn(5, recipe.WIDE_DIM, generator=torch.Generator().manual_seed(96))
    values, ids = table.topk(queries, 10, recipe.query_history())
    with torch.no_grad():
        history = table.lookup(recipe.query_history())
    save_rank(out, "columns", {
        "values": values, "ids": ids, "history": history, "centroid_sums": table.weighted_rows(recipe.tag_weights()),
        "queries": queries, "shard_widths": torch.tensor([s.tensor.shape[1] for s in table._shards]),
    })


def run_catalogue(args, out: Path) -> None:
    """The catalogue-wide methods on a FROZEN sharded table, each rank with its own number of
    queries (so the gathered parts need padding): full-softmax normalisers and their gradient,
    target ranks, top-k."""
    table = make_table(args.sharding, seed=recipe.SEED)
    table.frozen = True
    rank = dist.get_rank()
    u = recipe.rank_queries(rank).requires_grad_()
    tags, tag_ids, targets, history = recipe.catalogue_case(rank)
    lse = table.catalogue_logsumexp(u, tags, tag_ids)
    plain_lse = table.catalogue_logsumexp(u)
    recipe.catalogue_loss(lse, plain_lse).backward()
    ranks = table.target_ranks(u, targets, history)
    values, ids = table.topk(u, 7, history)
    save_rank(out, "catalogue", {"lse": lse.detach(), "plain_lse": plain_lse.detach(), "grad": u.grad,
                                 "ranks": ranks, "values": values, "ids": ids})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "load", "columns", "catalogue"])
    parser.add_argument("--sharding", default="row_wise")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--negative-control", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    init_distributed("cpu", timeout_minutes=2, deepspeed_comm=False)
    args.out.mkdir(parents=True, exist_ok=True)
    {"train": run_train, "load": run_load, "columns": run_columns, "catalogue": run_catalogue}[args.mode](args, args.out)
    dist.barrier()
    return 0  # run_rank destroys the process group


if __name__ == "__main__":
    run_rank(main)
