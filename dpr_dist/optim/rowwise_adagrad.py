"""Row-wise Adagrad for embedding tables, with the semantics of FBGEMM's EXACT_ROWWISE_ADAGRAD,
the fused optimizer of the distributed (TorchRec) item table, so both paths train alike.

Source of the formula: FBGEMM, fbgemm_gpu/codegen/genscript/optimizers.py, ``rowwise_adagrad()``
(its CPU kernel ``split_weight_update_cpu``), for each row r the batch touched:

    g'   = g[r] + weight_decay * w[r]            (weight_decay_mode L2; g' = g[r] otherwise)
    G[r] = G[r] + mean_j(g'_j ** 2)              (one accumulator per row: "momentum1")
    m    = lr / (sqrt(G[r]) + eps)
    w[r] = correction * w[r] - m * g[r]          correction = 1 - m * weight_decay   (L2)
                                                            = 1 - lr * weight_decay  (decoupled)
                                                            = 1                      (none)

FBGEMM visits the rows the batch looked up. A dense gradient cannot tell "looked up with an
exactly zero gradient" from "not looked up", so here a row whose gradient is entirely zero is left
alone, weight and state (the two only differ for such a row when weight decay is on).

Weight decay follows the formula above, but the pinned fbgemm-gpu-cpu 1.8.0 CPU kernel ignores it
(tests/test_rowwise_adagrad.py keeps a canary): train the item table with weight_decay=0 wherever
the single-process and distributed paths must agree.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

WEIGHT_DECAY_MODES = ("l2", "decoupled")


class RowWiseAdagrad(Optimizer):
    """For 2-D parameters (rows = embeddings); accepts dense and sparse gradients.

    Apply it after every micro-batch, without gradient clipping: the fused distributed table
    updates inside backward and can do neither accumulation nor clipping.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        weight_decay_mode: str = "l2",
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"RowWiseAdagrad: lr must be >= 0, got {lr}")
        if eps < 0.0:
            raise ValueError(f"RowWiseAdagrad: eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"RowWiseAdagrad: weight_decay must be >= 0, got {weight_decay}")
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"RowWiseAdagrad: weight_decay_mode {weight_decay_mode!r}; allowed: {', '.join(WEIGHT_DECAY_MODES)}"
            )
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: Tensor, group: dict) -> None:
        if param.dim() != 2:
            raise ValueError(f"RowWiseAdagrad handles 2-D embedding tables only, got shape {tuple(param.shape)}")
        state = self.state[param]
        if "sum" not in state:
            state["sum"] = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
        rows, grad = _touched_rows(param.grad)
        if rows.numel() == 0:
            return
        lr, eps, decay, mode = group["lr"], group["eps"], group["weight_decay"], group["weight_decay_mode"]
        weight = param[rows]
        decayed_grad = grad + decay * weight if decay and mode == "l2" else grad
        row_sum = state["sum"][rows] + decayed_grad.pow(2).mean(dim=1)
        state["sum"].index_copy_(0, rows, row_sum)
        multiplier = (lr / (row_sum.sqrt() + eps)).unsqueeze(1)
        if decay and mode == "l2":
            correction = 1.0 - multiplier * decay
        elif decay:
            correction = 1.0 - lr * decay
        else:
            correction = 1.0
        param.index_copy_(0, rows, correction * weight - multiplier * grad)


def _touched_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(row ids, their gradient rows) for the rows with a non-zero gradient; duplicates summed."""
    if grad.is_sparse:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
    else:
        rows, values = torch.arange(grad.shape[0], device=grad.device), grad
    nonzero = (values != 0).any(dim=1)
    return rows[nonzero], values[nonzero]
