"""One training stage: epochs, validation, early stopping, resumable state, the final checkpoint.

The same loop runs the single-process reference path and the distributed one; everything that
differs (model, optimisers, collectives, state files) is the runtime's (runtime.py). Every rank
runs this loop in lockstep: the same number of steps per epoch (fixed by the shard reader), the
same validation batches, and the same early-stopping decisions (validation values are all-reduced).
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from dpr_dist.common.atomic import write_bytes_atomic, write_json_atomic
from dpr_dist.common.complete import COMPLETE
from dpr_dist.training import resume
from dpr_dist.training.checkpoint import complete_checkpoint, finalise_checkpoint
from dpr_dist.training.config import TrainConfig
from dpr_dist.training.objectives import OBJECTIVES, Context

STAGE_ORDER = ("warmup", "align", "steer")
BEST = "best"
WEIGHTS = "model.safetensors"
# Fields of a history row that measure time, not training: left out when runs are compared.
TIMING_FIELDS = ("train_seconds",)


@dataclass
class StageResult:
    stage: str
    best_epoch: int
    best_metric: float
    metric_name: str
    history: list[dict]
    seconds: float
    checkpoint: str


@dataclass
class LoopState:
    """Where a stage is; saved in every resumable state (trainer.json)."""

    epoch: int = 0                 # the epoch in progress
    samples_consumed: int = 0      # of that epoch (a multiple of the global batch)
    global_step: int = 0
    epoch_steps: int = 0
    epoch_sums: dict = field(default_factory=dict)
    epoch_seconds: float = 0.0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    metric_name: str = ""
    history: list = field(default_factory=list)
    stopped: bool = False          # early stopping fired
    seconds: float = 0.0           # wall time of the stage so far


def stage_seed(cfg: TrainConfig, stage: str) -> int:
    return cfg.seed * 1000 + STAGE_ORDER.index(stage)


class MetricsLog:
    """Rank 0: per-step rows in ``steps.jsonl`` and TensorBoard scalars under ``<out>/tensorboard``.
    On resume, rows past the resumed step are dropped (and purged from TensorBoard), so a resumed
    run's logs read like an uninterrupted one's."""

    def __init__(self, stage_dir: Path, tb_dir: Path, stage: str, resumed_step: int, enabled: bool) -> None:
        self.enabled, self.stage = enabled, stage
        self.path = stage_dir / "steps.jsonl"
        self.writer = None
        if not enabled:
            return
        rows = []
        if resumed_step and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
        write_bytes_atomic(self.path, "".join(r + "\n" for r in rows).encode())
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in requirements.lock; a bare install may lack it
            return
        self.writer = SummaryWriter(str(tb_dir / stage), purge_step=resumed_step + 1 if resumed_step else None)

    def step(self, step: int, logs: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **logs}) + "\n")
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def epoch(self, step: int, row: dict) -> None:
        if self.writer is not None:
            for key, value in row.items():
                if key.startswith("valid/") and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train_stage(
    stage_name: str,
    cfg: TrainConfig,
    runtime,
    model: torch.nn.Module,
    loader,
    validate: Callable[[object], tuple[str, float, dict]],
    ctx: Context,
    out_dir: Path,
    fingerprint: str,
    extra_metrics: dict | None = None,
) -> StageResult:
    """Train one stage of ``model`` (built by ``runtime`` and holding the stage's starting
    weights) on ``loader`` (a ShardLoader); ``validate(trainer)`` returns (metric name, value to
    maximise, all validation metrics). Resumes from ``out_dir/<stage>/resume`` if it holds a state
    of this ``fingerprint``; writes ``out_dir/<stage>/`` (the best epoch's weights)."""
    stage = cfg.stage(stage_name)
    stage_dir = Path(out_dir) / stage_name
    resume_root = stage_dir / resume.RESUME_DIR
    best_path = stage_dir / BEST / WEIGHTS
    trainer = runtime.stage_trainer(model, stage)
    objective = OBJECTIVES[stage_name]
    main = runtime.is_main

    found = resume.latest(resume_root, fingerprint)
    runtime.barrier(f"{stage_name}: before reading the training state")
    if found:
        state_dir, saved = found
        state = LoopState(**saved["loop"])
        trainer.load_state(state_dir)
        resume.load_rng(state_dir, runtime.rank, ctx.generator)
        if main:
            tqdm.write(f"[{stage_name}] resuming from {state_dir} (epoch {state.epoch}, step {state.global_step})")
    else:
        state = LoopState()
        # Dropout draws per rank (rank 0 as the reference path); negatives and prompt noise from
        # the shared generator, the same on every rank.
        torch.manual_seed(stage_seed(cfg, stage_name) + 7919 * runtime.rank)
        ctx.generator.manual_seed(stage_seed(cfg, stage_name))
        if main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(resume_root, ignore_errors=True)
            shutil.rmtree(stage_dir / BEST, ignore_errors=True)
            (stage_dir / "history.jsonl").unlink(missing_ok=True)
            (stage_dir / "steps.jsonl").unlink(missing_ok=True)
    runtime.barrier(f"{stage_name}: after preparing {stage_dir}")
    log = MetricsLog(stage_dir, Path(out_dir) / "tensorboard", stage_name, state.global_step, main)

    def save_state() -> None:
        directory = resume_root / resume.state_name(state.global_step)
        if main:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        runtime.barrier(f"{stage_name}: before writing {directory}")
        resume.save_rng(directory, runtime.rank, ctx.generator)
        trainer.save_state(directory)
        if main:
            write_json_atomic(directory / resume.TRAINER, {"fingerprint": fingerprint, "loop": asdict(state)})
        runtime.barrier(f"{stage_name}: after writing {directory}")
        if main:
            resume.mark_complete(directory, resume_root)
        runtime.barrier(f"{stage_name}: after marking {directory} complete")

    started = time.time() - state.seconds
    while state.epoch < stage.epochs and not state.stopped:
        model.train()
        loader.seek(state.epoch, state.samples_consumed)
        epoch_start = time.time() - state.epoch_seconds
        total = stage.max_steps_per_epoch or len(loader)
        bar = tqdm(loader, desc=f"{stage_name} epoch {state.epoch}", total=min(total, len(loader)),
                   initial=state.epoch_steps, leave=False, disable=None if main else True)
        for batch in bar:
            batch = {k: v.to(runtime.device) for k, v in batch.items()}
            try:
                with runtime.guard(f"{stage_name} epoch {state.epoch} step {state.epoch_steps}"):
                    logs = trainer.step(objective, batch, ctx)
            except FloatingPointError as exc:
                raise FloatingPointError(f"stage {stage_name}, epoch {state.epoch}, step {state.epoch_steps}: {exc}") from None
            state.global_step += 1
            state.epoch_steps += 1
            state.samples_consumed = loader.samples_consumed
            for key, value in logs.items():
                state.epoch_sums[key] = state.epoch_sums.get(key, 0.0) + value
            if cfg.log_every_steps and state.global_step % cfg.log_every_steps == 0:
                log.step(state.global_step, logs)
            if stage.max_steps_per_epoch and state.epoch_steps >= stage.max_steps_per_epoch:
                break
            if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
                state.epoch_seconds, state.seconds = time.time() - epoch_start, time.time() - started
                save_state()
        bar.close()
        train_seconds = time.time() - epoch_start

        model.eval()
        with torch.no_grad(), runtime.guard(f"{stage_name} validation after epoch {state.epoch}"):
            state.metric_name, value, valid = validate(trainer)
        row = {
            "stage": stage_name, "epoch": state.epoch, "steps": state.epoch_steps,
            "train_seconds": round(train_seconds, 3),
            **{f"train/{k}": v / max(state.epoch_steps, 1) for k, v in sorted(state.epoch_sums.items())},
            **{f"valid/{k}": v for k, v in valid.items()},
        }
        state.history.append(row)
        log.epoch(state.global_step, row)
        if main:
            write_bytes_atomic(stage_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in state.history).encode())
        if main:
            tqdm.write(f"[{stage_name}] epoch {state.epoch}: loss {row.get('train/loss', float('nan')):.4f}  "
                       f"valid {state.metric_name} {value:.4f}")
        if value > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = value, state.epoch, 0
            if main:  # the old marker would name the old weights' checksum while the new ones are written
                (best_path.parent / COMPLETE).unlink(missing_ok=True)
            runtime.save_weights(model, best_path)
            if main:
                # best/ is a checkpoint of its own while the stage runs, so that launch.evaluate
                # can report on a run hours before it ends; the final checkpoint replaces it.
                complete_checkpoint(best_path.parent, asdict(cfg),
                                    {**_selection(stage_name, state, model, fingerprint), "in_progress": True})
        else:
            state.bad_epochs += 1
            state.stopped = state.bad_epochs >= stage.patience
        state.epoch, state.samples_consumed, state.epoch_steps = state.epoch + 1, 0, 0
        state.epoch_sums, state.epoch_seconds = {}, 0.0
        state.seconds = time.time() - started
        save_state()
    log.close()
    if state.best_epoch < 0:  # no epoch ran, or validation never gave a number: keep what there is
        runtime.save_weights(model, best_path)

    peak = torch.zeros(runtime.world_size, dtype=torch.float64)
    peak[runtime.rank] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    peak = runtime.all_reduce(peak)
    metrics = {
        **_selection(stage_name, state, model, fingerprint),
        "seconds": round(state.seconds, 2),
        "world_size": runtime.world_size,
        "peak_rss_mib_per_rank": [round(x, 1) for x in peak.tolist()],
        "seconds_per_step": round(sum(r["train_seconds"] for r in state.history) / max(1, sum(r["steps"] for r in state.history)), 4),
        "history": state.history,
        **(extra_metrics or {}),
    }
    if main:
        finalise_checkpoint(stage_dir, best_path, asdict(cfg), metrics)
        shutil.rmtree(resume_root, ignore_errors=True)
        shutil.rmtree(stage_dir / BEST, ignore_errors=True)
    runtime.barrier(f"{stage_name}: after writing the checkpoint {stage_dir}")
    return StageResult(stage_name, state.best_epoch, state.best_metric, state.metric_name, state.history,
                       state.seconds, str(stage_dir))


def _selection(stage_name: str, state: LoopState, model, fingerprint: str) -> dict:
    """What a checkpoint's metrics say of the kept epoch, mid-stage (best/) and at its end."""
    return {
        "stage": stage_name,
        "best_epoch": state.best_epoch,
        "selected_on": f"valid/{state.metric_name}",
        "best_metric": state.best_metric,
        "epochs_run": len(state.history),
        "fingerprint": fingerprint,
        "item_table_fixed_columns": model.item_table.fixed,  # load_model rebuilds the table with them
    }
