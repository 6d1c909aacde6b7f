"""DPRModel: a sequential backbone whose user vector a prompt can steer (DPR_SPEC.md "Model").

The model holds no distribution logic: the item table and the backbone are passed in, so a
sharded table can replace the plain one behind the same ItemTable interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones.base import Backbone
from .config import ModelConfig
from .experts import ExpertBank
from .fusion import FusionGate
from .item_table import PAD_ID, ItemTable
from .projection import PromptProjection
from .routing import NO_CLAUSE, Router, group_probabilities


@dataclass
class EncodedHistory:
    """What ``DPRModel.encode_history`` reads off a history: all that ``steer`` needs besides the prompt."""

    H: Tensor                      # [B, L', d] per-position states (fixed tag columns zero)
    h: Tensor                      # [B, d] user state, H[:, -1]
    ids: Tensor                    # [B, L'] the item ids read (the max_len most recent; 0 = padding)
    tags: Tensor | None = None     # [B, L', T] their fixed tag columns (ModelConfig.experts_read_history_tags)


@dataclass
class StreamOutput:
    u: Tensor                             # [B, d] steered user vector (== h without prompt)
    h: Tensor                             # [B, d] backbone user state
    z: Tensor | None = None               # [B, C, d] projected clauses
    router_logits: Tensor | None = None   # [B, C, 2] polarity-group logits (POSITIVE_GROUP, NEGATIVE_GROUP)
    group_probs: Tensor | None = None     # [B, C, 2] group weights actually used (0/1 in hard mode)
    gate: Tensor | None = None            # [B, C, 1 or d] fusion gate g of each clause


class DPRModel(nn.Module):
    """Parameter groups are the named submodules ``backbone``, ``item_table``, ``projection``,
    ``experts`` (``experts.pos`` / ``experts.neg`` / ``experts.shared``), ``router``, ``fusion``."""

    def __init__(self, backbone: Backbone, item_table: ItemTable, cfg: ModelConfig) -> None:
        super().__init__()
        if item_table.dim != cfg.hidden:
            raise ValueError(f"item table dim {item_table.dim} != ModelConfig.hidden {cfg.hidden}")
        self.cfg = cfg
        self.backbone = backbone
        self.item_table = item_table
        self.projection = PromptProjection(cfg)
        self.experts = ExpertBank(cfg)
        self.router = Router(cfg)
        self.fusion = FusionGate(cfg)

    def encode_history(self, hist: Tensor) -> EncodedHistory:
        """hist LongTensor [B, L], left-padded with 0 -> H [B, L', d], h [B, d] and what steer reads.

        Histories longer than max_len keep their max_len most recent items (L' = min(L, max_len)).
        One lookup serves the backbone and the experts' tag read (a lookup of a sharded table is a
        collective: doing it once per step matters).
        """
        hist = hist[:, -self.cfg.max_len :]
        emb = self.item_table.lookup(hist)
        fixed = self.item_table.fixed
        tags = emb[..., -fixed:].detach() if fixed and self.cfg.experts_read_history_tags else None
        if fixed:
            # Fixed tag columns (ModelConfig.tag_features) are a steering-only subspace: the backbone
            # neither reads nor writes them, so without a prompt the scores are those of the
            # learned columns alone, and only a prompt's delta can raise a whole tag.
            emb = torch.cat([emb[..., :-fixed], torch.zeros_like(emb[..., -fixed:])], dim=-1)
        H = self.backbone(emb, hist == PAD_ID)
        if fixed:
            H = torch.cat([H[..., :-fixed], torch.zeros_like(H[..., -fixed:])], dim=-1)
        return EncodedHistory(H=H, h=H[:, -1], ids=hist, tags=tags)

    def project_prompt(self, t: Tensor) -> Tensor:
        """z = P(t) for the align stage; t [..., prompt_dim] -> [..., d]."""
        return self.projection(t)

    def steer(
        self, history: EncodedHistory, clause_emb: Tensor | None, clause_polarity: Tensor | None,
    ) -> StreamOutput:
        """Apply up to C clauses to the user state of ``history`` (from ``encode_history``).

        clause_emb [B, C, prompt_dim]; clause_polarity LongTensor [B, C] with +1 / -1 / 0 (no
        clause) / 2 (unlabelled, learned routing only). A row whose clauses are all 0 gets u == h
        bit-exactly; with no clause tensor at all, u is h itself.
        """
        H, h = history.H, history.h
        if clause_emb is None or clause_emb.shape[1] == 0:
            return StreamOutput(u=h, h=h)
        if clause_polarity is None or clause_polarity.shape != clause_emb.shape[:2]:
            got = None if clause_polarity is None else tuple(clause_polarity.shape)
            raise ValueError(f"clause_polarity must have shape {tuple(clause_emb.shape[:2])}, got {got}")
        pad_mask = history.ids == PAD_ID
        memory = self._history_with_tags(history) if self.cfg.experts_read_history_tags else H
        active = clause_polarity != NO_CLAUSE
        z = self.projection(clause_emb)
        route = self.router(h, clause_emb)
        probs = group_probabilities(route.group_logits, clause_polarity, self.cfg.routing)
        mix = self.experts(memory, h, z, _readable(pad_mask, z.shape[1]), probs, route.pos_weights, route.neg_weights)
        gate = self.fusion(h, z)
        contrib = gate * mix
        # where(), not a multiplication by 0: a padding clause then adds exactly nothing, even -0.0.
        delta = torch.where(active.unsqueeze(-1), contrib, torch.zeros_like(contrib)).sum(dim=1)
        u = torch.where(active.any(dim=1, keepdim=True), h + delta, h)
        return StreamOutput(u=u, h=h, z=z, router_logits=route.group_logits, group_probs=probs, gate=gate)

    @staticmethod
    def _history_with_tags(history: EncodedHistory) -> Tensor:
        """H with its (zero) fixed tag columns replaced by the history items' tag columns."""
        if history.tags is None:
            raise ValueError("experts_read_history_tags needs tag_features (fixed tag columns in the item table)")
        fixed = history.tags.shape[-1]
        return torch.cat([history.H[..., :-fixed], history.tags.to(history.H.dtype)], dim=-1)

    def forward(
        self, hist: Tensor, clause_emb: Tensor | None = None, clause_polarity: Tensor | None = None
    ) -> StreamOutput:
        return self.steer(self.encode_history(hist), clause_emb, clause_polarity)

    def user_vectors(
        self, hist: Tensor, clause_emb: Tensor | None = None, clause_polarity: Tensor | None = None
    ) -> Tensor:
        """u [B, d]; score the catalogue with ``model.item_table.score_all(u)``."""
        return self.forward(hist, clause_emb, clause_polarity).u


def _readable(pad_mask: Tensor, num_clauses: int) -> Tensor:
    """Bool [B, C, L]: the history positions each clause's attention read may use.

    A row with an empty history may read every position: they are all zero padding states (the
    Backbone contract), so the read is a harmless constant instead of a softmax over nothing.
    """
    readable = ~pad_mask
    readable = readable | ~readable.any(dim=1, keepdim=True)
    return readable.unsqueeze(1).expand(-1, num_clauses, -1)
