"""From an objective's loss terms to the loss one process back-propagates.

Every term is a sum over some rows plus their number (dpr_dist.losses.Term). The loss of the
global batch is ``sum_i w_i * S_i / C_i`` with S_i, C_i summed over the ranks. Both DeepSpeed (dense
gradients) and TorchRec (table gradients) average the ranks' gradients, so each rank back-propagates

    L_r = sum_i w_i * S_i,r * world / C_i            (C_i: the GLOBAL count)

whose mean over the ranks is exactly the global loss. With one process this is the plain mean of
each term. One all-reduce per step carries the counts (needed before backward) and the sums (for
logging) of every term.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dpr_dist.losses import Term

AllReduce = Callable[[Tensor], Tensor]


def combine_terms(
    terms: dict[str, tuple[float, Term]], all_reduce: AllReduce, world_size: int
) -> tuple[Tensor, dict[str, float]]:
    """(loss to back-propagate on this rank, global value of the loss and of each term)."""
    names = sorted(terms)
    if not names:
        raise ValueError("the objective returned no loss term")
    local = torch.stack(
        [terms[n][1].total.detach().double().cpu() for n in names]
        + [terms[n][1].count.double().cpu() for n in names]
    )
    reduced = all_reduce(local)
    sums, counts = reduced[: len(names)], reduced[len(names):].clamp(min=1.0)
    loss = sum(terms[n][0] * terms[n][1].total * (world_size / float(counts[i])) for i, n in enumerate(names))
    logs = {n: float(sums[i] / counts[i]) for i, n in enumerate(names)}
    logs["loss"] = float(sum(terms[n][0] * sums[i] / counts[i] for i, n in enumerate(names)))
    return loss, logs
