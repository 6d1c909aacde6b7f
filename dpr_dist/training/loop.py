"""One training stage on one process: epochs, validation, early stopping, checkpoint.

The reference path: the distributed trainer must reproduce what this loop computes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from dpr_dist.optim.rowwise_adagrad import RowWiseAdagrad
from dpr_dist.training.checkpoint import save_checkpoint
from dpr_dist.training.config import TrainConfig
from dpr_dist.training.freeze import apply_freeze, trainable_dense
from dpr_dist.training.objectives import OBJECTIVES, Context

STAGE_ORDER = ("warmup", "align", "steer")


@dataclass
class StageResult:
    stage: str
    best_epoch: int
    best_metric: float
    metric_name: str
    history: list[dict]
    seconds: float
    checkpoint: str


def stage_seed(cfg: TrainConfig, stage: str) -> int:
    return cfg.seed * 1000 + STAGE_ORDER.index(stage)


def train_stage(
    stage_name: str,
    cfg: TrainConfig,
    model: torch.nn.Module,
    make_batches: Callable[[str, int], object],
    validate: Callable[[torch.nn.Module], tuple[str, float, dict]],
    ctx: Context,
    out_dir: Path,
    extra_metrics: dict | None = None,
) -> StageResult:
    """Train one stage; ``make_batches(stage, epoch)`` yields batches, ``validate(model)`` returns
    (metric name, value to maximise, all validation metrics). Writes ``out_dir/<stage>/``."""
    stage = cfg.stage(stage_name)
    torch.manual_seed(stage_seed(cfg, stage_name))
    ctx.generator.manual_seed(stage_seed(cfg, stage_name))
    apply_freeze(model, stage.train)
    dense = trainable_dense(model)
    dense_opt = torch.optim.AdamW(dense, lr=stage.lr, weight_decay=stage.weight_decay) if dense else None
    table_opt = (
        RowWiseAdagrad(model.item_table.parameters(), lr=stage.item_lr)
        if "item_table" in stage.train
        else None
    )
    objective = OBJECTIVES[stage_name]
    stage_dir = Path(out_dir) / stage_name
    stage_dir.mkdir(parents=True, exist_ok=True)
    log_path = stage_dir / "history.jsonl"
    log_path.unlink(missing_ok=True)

    started = time.time()
    history: list[dict] = []
    metric_name, best_metric, best_epoch, bad_epochs = "", -math.inf, -1, 0
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(stage.epochs):
        model.train()
        sums: dict[str, float] = {}
        steps = 0
        epoch_start = time.time()
        # disable=None: a live bar on a terminal, nothing in CI logs (the per-epoch line still prints).
        for batch in tqdm(make_batches(stage_name, epoch), desc=f"{stage_name} epoch {epoch}", leave=False, disable=None):
            loss, logs = objective(model, batch, stage, ctx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage_name}, epoch {epoch}, step {steps}: loss is {loss.item()}")
            for opt in (dense_opt, table_opt):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            loss.backward()
            if dense_opt is not None:
                if stage.grad_clip:
                    torch.nn.utils.clip_grad_norm_(dense, stage.grad_clip)
                dense_opt.step()
            if table_opt is not None:  # every micro-batch, never clipped: the fused-table semantics
                table_opt.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
            if stage.max_steps_per_epoch and steps >= stage.max_steps_per_epoch:
                break
        train_seconds = time.time() - epoch_start
        model.eval()
        with torch.no_grad():
            metric_name, value, valid = validate(model)
        row = {
            "stage": stage_name,
            "epoch": epoch,
            "steps": steps,
            "train_seconds": round(train_seconds, 3),
            **{f"train/{k}": v / max(steps, 1) for k, v in sums.items()},
            **{f"valid/{k}": v for k, v in valid.items()},
        }
        history.append(row)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        tqdm.write(f"[{stage_name}] epoch {epoch}: loss {row.get('train/loss', float('nan')):.4f}  valid {metric_name} {value:.4f}")
        if value > best_metric:
            best_metric, best_epoch, bad_epochs = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= stage.patience:
                break
    model.load_state_dict(best_state)
    seconds = time.time() - started
    metrics = {
        "stage": stage_name,
        "best_epoch": best_epoch,
        "selected_on": f"valid/{metric_name}",
        "best_metric": best_metric,
        "epochs_run": len(history),
        "seconds": round(seconds, 2),
        "history": history,
        **(extra_metrics or {}),
    }
    save_checkpoint(stage_dir, model.state_dict(), asdict(cfg), metrics)
    return StageResult(stage_name, best_epoch, best_metric, metric_name, history, seconds, str(stage_dir))
