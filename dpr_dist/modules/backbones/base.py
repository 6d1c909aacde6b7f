"""The contract every sequential backbone meets (SASRec, GRU4Rec, ...)."""

from __future__ import annotations

import abc

from torch import Tensor, nn


class Backbone(nn.Module, abc.ABC):
    """Maps the embeddings of a LEFT-padded history to one state per position.

    ``hist_emb`` [B, L, d] holds item embeddings looked up by the model (the table is shared with
    scoring, so the backbone owns no item embeddings); ``pad_mask`` [B, L] is True on padding.
    The result H [B, L, d] is causal (position i depends on items 0..i only), is zero on padding
    positions, and does not depend on how much left padding there is; H[:, -1] is the user state.
    """

    @abc.abstractmethod
    def forward(self, hist_emb: Tensor, pad_mask: Tensor) -> Tensor: ...
