"""Steering experts: each turns (H, h, z) into a delta on the user vector (DPR_SPEC.md item 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .config import ModelConfig
from .routing import NEGATIVE_GROUP, POSITIVE_GROUP


class Expert(nn.Module):
    """The prompt z reads the history states H with one multi-head attention (query = z), then an
    MLP over [h; z; read] gives the delta."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.read = MultiHeadAttention(d, cfg.expert_heads, cfg.dropout, cfg.attention_impl)
        self.mlp = nn.Sequential(
            nn.Linear(3 * d, cfg.expert_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.expert_hidden, d),
        )

    def forward(self, H: Tensor, h: Tensor, z: Tensor, readable: Tensor) -> Tensor:
        """H [B, L, d], h [B, d], z [B, C, d], readable Bool [B, C, L] -> delta [B, C, d]."""
        read = self.read(z, H, readable)
        return self.mlp(torch.cat([h.unsqueeze(1).expand_as(z), z, read], dim=-1))


class ExpertBank(nn.Module):
    """K+ positive, K- negative and an optional shared expert; named submodules ``pos``, ``neg``,
    ``shared`` so training stages can freeze or inspect each group."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos = nn.ModuleList(Expert(cfg) for _ in range(cfg.num_pos_experts))
        self.neg = nn.ModuleList(Expert(cfg) for _ in range(cfg.num_neg_experts))
        self.shared = Expert(cfg) if cfg.shared_expert else None

    def forward(
        self, H: Tensor, h: Tensor, z: Tensor, readable: Tensor,
        group_probs: Tensor, pos_weights: Tensor, neg_weights: Tensor,
    ) -> Tensor:
        """Mixture [B, C, d] = shared + p_pos * sum_k w+_k E+_k + p_neg * sum_k w-_k E-_k.

        Every expert runs on every clause, so the autograd graph has the same shape at every step
        (distributed data parallelism expects that); hard routing zeroes a group by its weight.
        """
        mix = self.shared(H, h, z, readable) if self.shared is not None else torch.zeros_like(z)
        for experts, weights, group in ((self.pos, pos_weights, POSITIVE_GROUP),
                                        (self.neg, neg_weights, NEGATIVE_GROUP)):
            if len(experts) == 0:
                continue
            group_mix = sum(weights[..., k : k + 1] * expert(H, h, z, readable) for k, expert in enumerate(experts))
            mix = mix + group_probs[..., group : group + 1] * group_mix
        return mix
