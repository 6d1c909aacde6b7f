"""Multi-head attention with two interchangeable kernels: PyTorch's fused
``F.scaled_dot_product_attention`` (the default, also fused on CPU) and an explicit
softmax(QK^T / sqrt(d_head)) V reference used to test the fused path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ATTENTION_IMPLS


def reference_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float = 0.0) -> Tensor:
    """q [B, H, Lq, dh], k/v [B, H, Lk, dh], allowed Bool broadcastable to [B, H, Lq, Lk]."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


class MultiHeadAttention(nn.Module):
    """Queries attend over separate key/value inputs; ``allowed[b, i, j]`` says whether query i may
    read key j. Every query row must allow at least one key (a fully masked row has no softmax)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, impl: str = "fused") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r}; allowed: {', '.join(ATTENTION_IMPLS)}")
        self.heads = heads
        self.dropout = dropout
        self.impl = impl
        self.q_proj = nn.Linear(dim, dim)
        # No key bias: q . (W x + b) shifts every key's score of a query by the same q . b, which the
        # softmax cancels. Its gradient is zero up to rounding, and Adam would turn that rounding
        # noise into lr-sized random steps (and break parity between runs that round differently).
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, kv: Tensor, allowed: Tensor) -> Tensor:
        """query [B, Lq, d], kv [B, Lk, d], allowed Bool [B, Lq, Lk] -> [B, Lq, d]."""
        q, k, v = (self._split(proj(x)) for proj, x in
                   ((self.q_proj, query), (self.k_proj, kv), (self.v_proj, kv)))
        mask = allowed.unsqueeze(1)  # broadcast over heads
        p = self.dropout if self.training else 0.0
        if self.impl == "fused":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            out = reference_attention(q, k, v, mask, p)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def _split(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)
