"""The distributed runtime: the same methods as the reference LocalRuntime (dpr_dist/training/runtime.py),
with the item table sharded by TorchRec (fused row-wise Adagrad or SGD, outside DeepSpeed) and the
dense modules a stage trains inside a DeepSpeed engine (ZeRO 0-3, explicit clipping).

One step (every rank, in lockstep): the objective runs inside the engine's forward; the loss terms
are all-reduced once (dpr_dist.training.step); ``engine.backward``; the table's deferred update
(``apply_gradients``: one TorchRec backward, the fused optimizer, unclipped); ``engine.step``.

Training state (resume): the dense part as ``dense.safetensors`` with FULL fp32 values and AdamW
moments, read through DeepSpeed's tensor-fragment API whatever the ZeRO stage, so a state written by
N ranks loads on M ranks and under another ZeRO stage, without pickle; the table and its fused
optimizer state with torch.distributed.checkpoint (``table/``), which reshards on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from dpr_dist.distributed import export
from dpr_dist.distributed.engine import build_dense_engine
from dpr_dist.distributed.env import barrier_or_fail, collective_guard, init_distributed
from dpr_dist.distributed.sharded_table import ShardedItemTable
from dpr_dist.distributed.table_checkpoint import load_table, save_table
from dpr_dist.modules import DPRModel, ModelConfig, build_model
from dpr_dist.training.config import StageConfig, TrainConfig
from dpr_dist.training.freeze import apply_freeze, named_trainable_dense
from dpr_dist.training.runtime import DENSE_STATE, MOMENTS, StateError, check_finite, dense_state, read_dense_state, save_tensors
from dpr_dist.training.step import combine_terms

TABLE_STATE_DIR = "table"


class DistributedRuntime:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg.distributed
        self.info = init_distributed(cfg.device, timeout_minutes=self.cfg.timeout_minutes)
        self.rank, self.world_size = self.info.rank, self.info.world_size
        self.is_main = self.rank == 0
        kind = torch.device(cfg.device).type
        self.device = torch.device(f"cuda:{self.info.local_rank}") if kind == "cuda" else torch.device("cpu")

    def all_reduce(self, tensor: Tensor) -> Tensor:
        out = tensor.to(self.device).clone()
        dist.all_reduce(out)
        return out.to(tensor.device)

    def barrier(self, what: str) -> None:
        barrier_or_fail(what, timeout_seconds=self.cfg.timeout_minutes * 60)

    def guard(self, what: str):
        """A failed collective inside becomes a DistributedTimeoutError saying ``what`` was waiting."""
        return collective_guard(what)

    def build_model(self, cfg: ModelConfig, num_items: int, seed: int, stage: StageConfig,
                    fixed_columns: Tensor | None = None) -> DPRModel:
        table = ShardedItemTable(
            num_items, cfg.hidden, sharding=self.cfg.sharding, optimizer=self.cfg.table_optimizer,
            lr=stage.item_lr, seed=seed, device=str(self.device), fixed_columns=fixed_columns,
        )
        return build_model(cfg, num_items, seed=seed, item_table=table).to(self.device)

    def stage_trainer(self, model: DPRModel, stage: StageConfig) -> "DistributedStageTrainer":
        return DistributedStageTrainer(self, model, stage)

    def save_weights(self, model: DPRModel, path: Path) -> Path | None:
        """Collective: the consolidated single-file export (dpr_dist.distributed.export)."""
        with collective_guard(f"export of {path}"):
            return export.export_model(_full_dense_state(model), model.item_table, Path(path))

    def load_weights(self, model: DPRModel, path: Path) -> None:
        """Every rank reads the dense tensors and the rows of its own shards."""
        own = _dense_tensors(model)
        values = export.read_dense(path, list(own))
        with torch.no_grad():
            for key, value in values.items():
                if own[key].shape != value.shape:
                    raise StateError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}")
                own[key].copy_(value)
        export.load_table_rows(model.item_table, path)


def _dense_tensors(model: DPRModel) -> dict[str, Tensor]:
    """The model's parameters and buffers outside the item table, by state_dict name. Not through
    ``model.state_dict()``: TorchRec's state-dict hook on the sharded table re-prefixes the keys
    its parent collected before it (``backbone.*`` comes out as ``item_table.collection.backbone.*``)."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return {k: v for k, v in tensors.items() if not k.startswith("item_table.")}


def _full_dense_state(model: DPRModel) -> dict[str, Tensor]:
    """Every dense tensor of the model, whole (ZeRO-3 keeps partitions: they are gathered)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for key, value in _dense_tensors(model).items():
        if hasattr(value, "ds_id"):  # ZeRO-3 partitioned
            value = safe_get_full_fp32_param(value)
        out[key] = value.detach().to("cpu")
    return out


class DistributedStageTrainer:
    def __init__(self, runtime: DistributedRuntime, model: DPRModel, stage: StageConfig) -> None:
        apply_freeze(model, stage.train)
        self.runtime, self.model, self.stage = runtime, model, stage
        self.table: ShardedItemTable = model.item_table
        self.named_dense = named_trainable_dense(model)
        self.accumulation = runtime.cfg.gradient_accumulation_steps
        with collective_guard("building the DeepSpeed engine"):
            self.engine = build_dense_engine(
                model, stage, zero_stage=runtime.cfg.zero_stage,
                gradient_accumulation_steps=self.accumulation, allow_accumulation=runtime.cfg.allow_accumulation,
            )

    def run(self, fn: Callable, *args):
        """``fn(model, *args)`` inside the engine's forward (ZeRO-3 gathers parameters there)."""
        return self.engine(fn, *args) if self.engine is not None else fn(self.model, *args)

    def step(self, objective: Callable, batch: dict, ctx) -> dict[str, float]:
        parts = _micro_batches(batch, self.accumulation)
        totals: dict[str, float] = {}
        for micro in parts:
            terms = self.run(objective, micro, self.stage, ctx)
            loss, logs = combine_terms(terms, self.runtime.all_reduce, self.runtime.world_size)
            check_finite(logs)
            if self.engine is not None:
                self.engine.backward(loss)
            else:
                loss.backward()
            self.table.apply_gradients()  # every micro-batch, never clipped: the fused update
            if self.engine is not None:
                self.engine.step()
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value / len(parts)
        return totals

    # ---- training state ------------------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        tensors = dense_state(self.named_dense, self._full_param, self._full_moment, self._step)
        if self.runtime.is_main:
            save_tensors(tensors, directory / DENSE_STATE)
        with collective_guard(f"saving {directory / TABLE_STATE_DIR}"):
            save_table(self.table, directory / TABLE_STATE_DIR)

    def load_state(self, directory: Path) -> None:
        state = read_dense_state(directory / DENSE_STATE, self.named_dense)
        step = max((float(v) for k, v in state.items() if k.endswith(".step")), default=None)
        for name, param in self.named_dense:
            self._set_param(param, state[name])
            for key in MOMENTS:
                if f"{name}.{key}" in state:
                    self._set_moment(param, key, state[f"{name}.{key}"])
        if step is not None:
            self._set_steps(step)
        with collective_guard(f"loading {directory / TABLE_STATE_DIR}"):
            load_table(self.table, directory / TABLE_STATE_DIR, verify=False)  # resume.verify did

    # DeepSpeed keeps the fp32 values and moments in different places per ZeRO stage: the torch
    # optimizer's own state (stage 0), flat partitions reached through the fragment API (1-3).
    def _base_optimizer(self):
        opt = self.engine.optimizer
        return getattr(opt, "optimizer", opt)

    def _zero(self) -> bool:
        return self.engine is not None and self.engine.zero_optimization_stage() > 0

    def _full_param(self, param) -> Tensor:
        if self._zero():
            from deepspeed.utils import safe_get_full_fp32_param

            return safe_get_full_fp32_param(param)
        return param.detach()

    def _full_moment(self, param, key: str) -> Tensor | None:
        if self._zero():
            from deepspeed.utils import safe_get_full_optimizer_state

            return safe_get_full_optimizer_state(param, key)
        return self._base_optimizer().state.get(param, {}).get(key)

    def _step(self, param) -> Tensor | None:
        states = self._base_optimizer().state
        if self._zero():  # one flat parameter per group: every dense parameter shares its step
            steps = [s["step"] for s in states.values() if "step" in s]
            return steps[0] if steps else None
        return states.get(param, {}).get("step")

    def _set_param(self, param, value: Tensor) -> None:
        value = value.to(self.runtime.device)
        if self._zero():
            from deepspeed.utils import safe_set_full_fp32_param

            safe_set_full_fp32_param(param, value)  # the optimizer's fp32 copy
            if hasattr(param, "ds_id"):  # ZeRO-3: the module's partition too
                import deepspeed

                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    if self.runtime.is_main:
                        param.data.copy_(value)
                return
        with torch.no_grad():
            param.data.copy_(value)  # the module's (full) parameter, which forward reads

    def _set_moment(self, param, key: str, value: Tensor) -> None:
        value = value.to(self.runtime.device)
        if self._zero():
            from deepspeed.utils import safe_set_full_optimizer_state

            safe_set_full_optimizer_state(param, value, key)
            return
        state = self._base_optimizer().state.setdefault(param, {})
        state[key] = value.clone()

    def _set_steps(self, step: float) -> None:
        opt = self._base_optimizer()
        if not self._zero():
            for _, param in self.named_dense:
                opt.state.setdefault(param, {})["step"] = torch.tensor(step)
            return
        for state in opt.state.values():
            if "step" in state:
                state["step"] = torch.full_like(torch.as_tensor(state["step"]), step) if torch.is_tensor(state["step"]) else step


def _micro_batches(batch: dict, parts: int) -> list[dict]:
    if parts == 1:
        return [batch]
    size = next(iter(batch.values())).shape[0]
    if size % parts:
        raise ValueError(f"a rank's batch of {size} does not split into {parts} micro-batches")
    step = size // parts
    return [{k: v[i * step : (i + 1) * step] for k, v in batch.items()} for i in range(parts)]
