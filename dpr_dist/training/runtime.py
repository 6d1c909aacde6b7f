"""Where the training loop meets the machine. :class:`LocalRuntime` is the single-process reference
path: a PlainItemTable, torch AdamW for the dense modules and RowWiseAdagrad for the table. The
distributed runtime (dpr_dist.distributed.runtime) has the same methods with a TorchRec-sharded
table and a DeepSpeed engine; the loop (loop.py) never asks which one it has.

A runtime builds the model of a stage, its stage trainer (optimisers, one step), and saves or loads
weights (the consolidated safetensors export that evaluation and serving read) and the resumable
training state. The training state is world-size independent and pickle-free:

    dense.safetensors   every trained dense parameter ``<name>`` with its AdamW moments
                        ``<name>.exp_avg`` / ``<name>.exp_avg_sq`` and ``<name>.step``
    table.safetensors   (this runtime) the item table ``weight`` and its row-wise Adagrad ``sum``
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dpr_dist.common.atomic import atomic_path
from dpr_dist.modules import DPRModel, ModelConfig, build_model
from dpr_dist.optim.rowwise_adagrad import RowWiseAdagrad
from dpr_dist.training.config import StageConfig
from dpr_dist.training.freeze import apply_freeze, named_trainable_dense
from dpr_dist.training.step import combine_terms

DENSE_STATE = "dense.safetensors"
TABLE_STATE = "table.safetensors"
MOMENTS = ("exp_avg", "exp_avg_sq")


class StateError(RuntimeError):
    """A training state that does not fit the model it is loaded into."""


def save_tensors(tensors: dict[str, Tensor], path: Path) -> Path:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    return path


def check_finite(logs: dict[str, float]) -> None:
    """Raised before backward, so a NaN/inf loss never reaches the weights (same value on every rank)."""
    if not torch.isfinite(torch.tensor(logs["loss"])):
        raise FloatingPointError(f"loss is {logs['loss']} (terms: {logs})")


def dense_state(named: list[tuple[str, nn.Parameter]], value: Callable, moment: Callable, step: Callable) -> dict[str, Tensor]:
    """The dense part of a training state; ``value(p)``, ``moment(p, key)``, ``step(p)`` read the
    full fp32 values wherever the optimizer keeps them (None = no state yet)."""
    out = {}
    for name, param in named:
        out[name] = value(param)
        for key in MOMENTS:
            m = moment(param, key)
            if m is not None:
                out[f"{name}.{key}"] = m
        s = step(param)
        if s is not None:
            out[f"{name}.step"] = torch.as_tensor(s, dtype=torch.float32).reshape(()).clone()
    return out


def read_dense_state(path: Path, named: list[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
    if not path.is_file():
        raise StateError(f"{path}: missing from the training state")
    state = load_file(str(path))
    missing = [name for name, _ in named if name not in state]
    if missing:
        raise StateError(f"{path}: no values for trained parameter(s) {missing}: saved by a stage that trains other modules?")
    for name, param in named:
        if tuple(state[name].shape) != tuple(param.ds_shape if hasattr(param, "ds_shape") else param.shape):
            raise StateError(f"{path}: {name} has shape {tuple(state[name].shape)}, the model {tuple(param.shape)}")
    return state


class LocalRuntime:
    """One process, no process group."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)

    def all_reduce(self, tensor: Tensor) -> Tensor:
        return tensor

    def barrier(self, what: str) -> None:
        pass

    def guard(self, what: str):
        return contextlib.nullcontext()

    def build_model(self, cfg: ModelConfig, num_items: int, seed: int, stage: StageConfig,
                    fixed_columns: Tensor | None = None) -> DPRModel:
        return build_model(cfg, num_items, seed=seed, fixed_columns=fixed_columns).to(self.device)

    def stage_trainer(self, model: DPRModel, stage: StageConfig) -> "LocalStageTrainer":
        return LocalStageTrainer(model, stage)

    def save_weights(self, model: DPRModel, path: Path) -> Path:
        """Every tensor of the model's state_dict, as one safetensors file (written atomically)."""
        return save_tensors(model.state_dict(), Path(path))

    def load_weights(self, model: DPRModel, path: Path) -> None:
        load_weights_into(model, load_file(str(path)), path)


def load_weights_into(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Strict load that names the file and the keys at fault."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise StateError(f"{path}: does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise StateError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}")
    model.load_state_dict(state)


class LocalStageTrainer:
    """Optimisers of one stage: AdamW (dense, clipped) and RowWiseAdagrad (table, every step, never
    clipped: the semantics of the distributed table's fused optimizer)."""

    def __init__(self, model: DPRModel, stage: StageConfig) -> None:
        apply_freeze(model, stage.train)
        self.model, self.stage = model, stage
        self.named_dense = named_trainable_dense(model)
        dense = [p for _, p in self.named_dense]
        self.dense_opt = torch.optim.AdamW(dense, lr=stage.lr, weight_decay=stage.weight_decay) if dense else None
        self.table = model.item_table
        self.table_opt = RowWiseAdagrad(self.table.parameters(), lr=stage.item_lr) if "item_table" in stage.train else None

    def run(self, fn: Callable, *args):
        """``fn(model, *args)``: how the loop calls the model (the distributed trainer runs it
        inside the DeepSpeed engine)."""
        return fn(self.model, *args)

    def step(self, objective: Callable, batch: dict, ctx) -> dict[str, float]:
        terms = self.run(objective, batch, self.stage, ctx)
        loss, logs = combine_terms(terms, lambda t: t, 1)
        check_finite(logs)
        for opt in (self.dense_opt, self.table_opt):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.dense_opt is not None:
            if self.stage.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.named_dense], self.stage.grad_clip)
            self.dense_opt.step()
        if self.table_opt is not None:
            self.table_opt.step()
        return logs

    # ---- training state ------------------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        opt_state = self.dense_opt.state if self.dense_opt is not None else {}
        tensors = dense_state(
            self.named_dense, lambda p: p.detach(),
            lambda p, key: opt_state.get(p, {}).get(key), lambda p: opt_state.get(p, {}).get("step"),
        )
        save_tensors(tensors, directory / DENSE_STATE)
        weight = self.table.embedding.weight
        table = {"weight": weight.detach()}
        if self.table_opt is not None and "sum" in self.table_opt.state.get(weight, {}):
            table["sum"] = self.table_opt.state[weight]["sum"]
        save_tensors(table, directory / TABLE_STATE)

    def load_state(self, directory: Path) -> None:
        state = read_dense_state(directory / DENSE_STATE, self.named_dense)
        with torch.no_grad():
            for name, param in self.named_dense:
                param.copy_(state[name])
                if f"{name}.step" in state and self.dense_opt is not None:
                    self.dense_opt.state[param] = {
                        "step": state[f"{name}.step"].clone(),
                        **{key: state[f"{name}.{key}"].clone() for key in MOMENTS},
                    }
        table_path = directory / TABLE_STATE
        if not table_path.is_file():
            raise StateError(f"{table_path}: missing from the training state")
        table = load_file(str(table_path))
        weight = self.table.embedding.weight
        if tuple(table["weight"].shape) != tuple(weight.shape):
            raise StateError(f"{table_path}: weight has shape {tuple(table['weight'].shape)}, the table {tuple(weight.shape)}")
        with torch.no_grad():
            weight.copy_(table["weight"])
        if self.table_opt is not None and "sum" in table:
            self.table_opt.state[weight] = {"sum": table["sum"].clone()}
