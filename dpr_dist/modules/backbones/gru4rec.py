"""GRU4Rec (Hidasi et al., 2016) in its common next-item form: a GRU over item embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig
from .base import Backbone


class GRU4Rec(Backbone):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(
            d, d, num_layers=cfg.gru_layers, batch_first=True,
            dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0,
        )
        self.out = nn.Linear(d, d)

    def forward(self, hist_emb: Tensor, pad_mask: Tensor) -> Tensor:
        batch, length, _ = hist_emb.shape
        lengths = (~pad_mask).sum(dim=1)
        left_pads = (length - lengths).unsqueeze(1)
        steps = torch.arange(length, device=hist_emb.device).unsqueeze(0)
        # A GRU fed the leading padding would drift away from its initial state, so each row is
        # rotated to right padding and packed: every row starts from h0 at its first real item.
        right_aligned = _take_rows(hist_emb, (steps + left_pads) % length)
        packed = pack_padded_sequence(
            self.emb_dropout(right_aligned), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        states = _take_rows(out, (steps - left_pads) % length)
        return self.out(states) * (~pad_mask).unsqueeze(-1).to(states.dtype)


def _take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, L, d], index [B, L] -> x[b, index[b, i]]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
