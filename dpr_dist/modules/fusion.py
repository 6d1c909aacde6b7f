"""Fusion gate g(h, z) of u = h + g(h, z) * sum_k w_k expert_k (DPR_SPEC.md item 5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig


class FusionGate(nn.Module):
    """Sigmoid gate per clause: one scalar ("scalar") or one value per dimension ("vector"), never
    below ``fusion_gate_floor`` (0 by default: the plain sigmoid)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        out = 1 if cfg.fusion_gate == "scalar" else cfg.hidden
        self.linear = nn.Linear(2 * cfg.hidden, out)
        self.floor = cfg.fusion_gate_floor

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        """h [B, d], z [B, C, d] -> [B, C, 1 or d]."""
        gate = torch.sigmoid(self.linear(torch.cat([h.unsqueeze(1).expand_as(z), z], dim=-1)))
        return self.floor + (1.0 - self.floor) * gate if self.floor else gate
