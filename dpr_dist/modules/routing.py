"""Clause polarity codes and the router: a gate over [h; t] that picks a polarity group and the
experts inside it (DPR_SPEC.md "Model", item 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig

# clause_polarity values
POSITIVE = 1
NEGATIVE = -1
NO_CLAUSE = 0      # padding: the slot holds no clause and contributes nothing
UNLABELLED = 2     # a real clause of unknown polarity (free text): learned routing only

# Index of each polarity group in the router's group logits.
POSITIVE_GROUP = 0
NEGATIVE_GROUP = 1
NUM_GROUPS = 2


@dataclass
class Route:
    group_logits: Tensor  # [B, C, 2], POSITIVE_GROUP / NEGATIVE_GROUP
    pos_weights: Tensor   # [B, C, K+], softmax within the positive group
    neg_weights: Tensor   # [B, C, K-]


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_pos = cfg.num_pos_experts
        # The gate reads the raw encoder embedding t, not the aligned z: t still carries the
        # negation words that the alignment stage may have washed out of z.
        self.gate = nn.Sequential(
            nn.Linear(cfg.hidden + cfg.prompt_dim, cfg.router_hidden),
            nn.ReLU(),
            nn.Linear(cfg.router_hidden, NUM_GROUPS + cfg.num_pos_experts + cfg.num_neg_experts),
        )

    def forward(self, h: Tensor, t: Tensor) -> Route:
        """h [B, d], t [B, C, prompt_dim]."""
        logits = self.gate(torch.cat([h.unsqueeze(1).expand(-1, t.shape[1], -1), t], dim=-1))
        group, pos, neg = logits.split([2, self.num_pos, logits.shape[-1] - 2 - self.num_pos], dim=-1)
        return Route(group, torch.softmax(pos, dim=-1), torch.softmax(neg, dim=-1))


def group_probabilities(group_logits: Tensor, polarity: Tensor, mode: str) -> Tensor:
    """[B, C, 2] weights of the two polarity groups.

    "hard": the label decides, as exact 0/1 constants, so the group a clause is not routed to
    receives exactly zero gradient from it. "learned": the router's soft probabilities.
    """
    if mode == "learned":
        return torch.softmax(group_logits, dim=-1)
    if mode != "hard":
        raise ValueError(f"routing mode {mode!r}; allowed: learned, hard")
    if bool((polarity == UNLABELLED).any()):
        raise ValueError(
            "hard routing needs a polarity label (+1 / -1) for every clause, but clause_polarity "
            f"contains {UNLABELLED} (unlabelled free text): use routing='learned'"
        )
    labels = torch.stack([polarity == POSITIVE, polarity == NEGATIVE], dim=-1)
    return labels.to(group_logits.dtype)
