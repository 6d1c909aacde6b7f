"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..config import ModelConfig
from .base import Backbone


def causal_allowed(pad_mask: Tensor) -> Tensor:
    """Bool [B, L, L]: query i may read key j iff j <= i and key j is not padding.

    Padding queries also read themselves: otherwise their softmax row would be empty (NaN in the
    fused kernel). Their outputs are zeroed afterwards, and no real query ever reads a padding key.
    """
    length = pad_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=pad_mask.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=pad_mask.device)
    return (causal & ~pad_mask[:, None, :]) | diagonal


class SASRecBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.layout = cfg.sasrec_layout
        self.attn_norm = nn.LayerNorm(d, eps=1e-8)
        self.attn = MultiHeadAttention(d, cfg.num_heads, cfg.dropout, cfg.attention_impl)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(d, d), nn.Dropout(cfg.dropout), nn.ReLU(), nn.Linear(d, d), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        if self.layout == "original":
            # Kang & McAuley's code: the normalised sequence is the query and the residual, the
            # raw sequence gives keys/values; the feed-forward adds its own (normalised) input.
            q = self.attn_norm(x)
            x = q + self.attn(q, x, allowed)
            y = self.ffn_norm(x)
            return y + self.ffn(y)
        if self.layout == "pre":
            y = self.attn_norm(x)
            x = x + self.attn(y, y, allowed)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, x, allowed))
        return self.ffn_norm(x + self.ffn(x))


class SASRec(Backbone):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_len = cfg.max_len
        self.scale = cfg.hidden**0.5
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(cfg) for _ in range(cfg.num_blocks))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=1e-8)
        for name, param in self.named_parameters():
            if param.dim() == 2:  # same init as the PyTorch SASRec port of our calibration run
                nn.init.xavier_normal_(param)

    def forward(self, hist_emb: Tensor, pad_mask: Tensor) -> Tensor:
        length = hist_emb.shape[1]
        if length > self.max_len:
            raise ValueError(f"SASRec: history length {length} exceeds max_len {self.max_len}")
        # Positions count from the right, so the most recent item always has position max_len - 1
        # whatever the amount of left padding (the original's layout when L == max_len).
        positions = torch.arange(self.max_len - length, self.max_len, device=hist_emb.device)
        keep = (~pad_mask).unsqueeze(-1).to(hist_emb.dtype)
        x = self.emb_dropout(hist_emb * self.scale + self.positions(positions)) * keep
        allowed = causal_allowed(pad_mask)
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.final_norm(x) * keep
