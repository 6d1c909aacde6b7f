"""Prompt projection z = P(t): encoder space (prompt_dim) -> collaborative space (d)."""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig


class PromptProjection(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(cfg.prompt_dim, cfg.projection_hidden), nn.GELU(), nn.Linear(cfg.projection_hidden, cfg.hidden)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(t)
