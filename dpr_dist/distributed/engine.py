"""DeepSpeed engine for the dense modules a stage trains (backbone, projection, experts, router, fusion).

The item table never enters the engine: it is a TorchRec-sharded table with its own fused optimizer
(sharded_table.py). Each stage builds its own engine over the groups it trains.

Optimizer: AdamW through ``"torch_adam": true`` (torch.optim.AdamW, no fused_adam JIT build; it
matches the single-process loop's torch AdamW exactly). Gradient clipping is set explicitly from
``stage.grad_clip`` because DeepSpeed silently clips at 1.0 when the key is absent; it covers the
dense parameters only, as in the single-process loop.

Gradient accumulation and the table: the table update happens at every micro-batch (in
``ShardedItemTable.apply_gradients`` after each backward) and is never clipped, while DeepSpeed would
step the dense part once per ``gradient_accumulation_steps`` micro-batches. With accumulation > 1 the
table would therefore step more often, on smaller batches, than the dense part, and neither would
match the single-process run. The default (1) keeps both on the same global batch; accumulation > 1
is refused unless ``allow_accumulation=True`` says the caller accepts that.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dpr_dist.training.config import StageConfig
from dpr_dist.training.freeze import module_groups

ZERO_STAGES = (0, 1, 2, 3)
ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the single-process loop uses
ADAM_EPS = 1e-8


def deepspeed_config(
    stage: StageConfig,
    world_size: int,
    zero_stage: int = 0,
    gradient_accumulation_steps: int = 1,
    allow_accumulation: bool = False,
) -> dict[str, Any]:
    """DeepSpeed config dict for one stage; ``stage.batch_size`` is the GLOBAL batch (samples)."""
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage {zero_stage}; allowed: {ZERO_STAGES}")
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    if gradient_accumulation_steps > 1 and not allow_accumulation:
        raise ValueError(
            f"gradient_accumulation_steps={gradient_accumulation_steps}: the fused item-table update runs at "
            "every micro-batch, so the table would step more often than the dense part; pass "
            "allow_accumulation=True to accept that (see dpr_dist/distributed/engine.py)"
        )
    per_step = world_size * gradient_accumulation_steps
    if stage.batch_size % per_step:
        raise ValueError(
            f"stage batch_size {stage.batch_size} (global) is not divisible by world_size {world_size} x "
            f"gradient_accumulation_steps {gradient_accumulation_steps}: ranks would see unequal slices"
        )
    return {
        "train_batch_size": stage.batch_size,
        "train_micro_batch_size_per_gpu": stage.batch_size // per_step,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": float(stage.grad_clip),  # explicit: 0.0 = off; DeepSpeed's default is 1.0
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": stage.lr,
                "weight_decay": stage.weight_decay,
                "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS,
                "torch_adam": True,
            },
        },
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DenseGroups(nn.Module):
    """Registers only the stage's trained dense groups (so DeepSpeed broadcasts, partitions and
    optimises just those) while ``forward(fn, *args)`` runs ``fn(model, *args)`` on the whole
    model, sharded table included: objectives call several of the model's methods, and ZeRO-3 must
    see all of that inside the engine's forward."""

    def __init__(self, model: nn.Module, trained: list[str]) -> None:
        super().__init__()
        groups = module_groups(model)
        unknown = sorted(set(trained) - set(groups))
        if unknown:
            raise ValueError(f"stage trains {unknown}, which the model does not have; it has {sorted(groups)}")
        self.groups = nn.ModuleDict({name: nn.ModuleList(groups[name]) for name in trained if name != "item_table"})
        object.__setattr__(self, "_model", model)  # not a submodule: the table must stay out of the engine

    def forward(self, fn, *args):
        return fn(self._model, *args)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.groups.parameters() if p.requires_grad]


def build_dense_engine(
    model: nn.Module,
    stage: StageConfig,
    zero_stage: int = 0,
    gradient_accumulation_steps: int = 1,
    allow_accumulation: bool = False,
):
    """A DeepSpeed engine over the stage's trained dense groups, or None if the stage trains none.

    Needs ``env.init_distributed`` first and ``apply_freeze(model, stage.train)`` (requires_grad).
    Use: ``out = engine(fn, *args)`` (runs ``fn(model, *args)``), ``engine.backward(loss)``, then
    ``table.apply_gradients()``, then ``engine.step()``."""
    import deepspeed
    import torch.distributed as dist

    dense = DenseGroups(model, stage.train)
    params = dense.trainable_parameters()
    if not params:
        return None
    config = deepspeed_config(stage, dist.get_world_size(), zero_stage, gradient_accumulation_steps, allow_accumulation)
    engine, _, _, _ = deepspeed.initialize(model=dense, model_parameters=params, config=config)
    return engine
