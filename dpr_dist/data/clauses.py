"""Turn a case's prompt ids into the model's clause inputs.

A case carries at most one positive and one negative clause (``pos_prompt``, ``neg_prompt``; -1 =
absent). The model takes clause embeddings [B, 2, D] and polarities [B, 2] (+1, -1, 0 = absent),
so standard, positive, negative and combined cases share one batch layout.
"""

from __future__ import annotations

import torch
from torch import Tensor


def clause_inputs(pos_prompt: Tensor, neg_prompt: Tensor, prompt_emb: Tensor) -> tuple[Tensor, Tensor]:
    ids = torch.stack([pos_prompt, neg_prompt], dim=1).to(prompt_emb.device)  # [B, 2]
    present = ids >= 0
    sign = torch.tensor([1, -1], dtype=torch.long, device=ids.device)
    polarity = torch.where(present, sign.expand_as(ids), torch.zeros_like(ids))
    emb = prompt_emb[ids.clamp(min=0)] * present.unsqueeze(-1).to(prompt_emb.dtype)
    return emb, polarity
