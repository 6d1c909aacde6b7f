"""What each training stage minimises, one function per stage (DPR_SPEC "Training stages").

Each takes the model, a batch from the shard reader and the run's :class:`Context`, and returns the
loss with a dict of floats to log. Which parameters the loss may move is decided by the stage
(frozen groups), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dpr_dist import losses
from dpr_dist.data.clauses import clause_inputs
from dpr_dist.training.config import StageConfig


@dataclass
class Context:
    """Tensors every stage needs besides the model: prompt embeddings, item tags, sampling q."""

    prompt_emb: Tensor       # float [P, prompt_dim]
    item_tag: Tensor         # bool [N+1, T]
    item_log_q: Tensor       # float [N+1]: log sampling probability (for the sampled softmax)
    generator: torch.Generator

    def tag_centroids(self, item_weight: Tensor) -> Tensor:
        """Mean item embedding of each tag [T, d] (detached: the target of alignment, not trained)."""
        tags = self.item_tag.to(item_weight.dtype)  # [N+1, T]
        counts = tags.sum(0).clamp(min=1).unsqueeze(1)
        return (tags.T @ item_weight.detach()) / counts


def _next_item_loss(model, states: Tensor, targets: Tensor, stage: StageConfig, ctx: Context) -> Tensor:
    if stage.loss == "full":
        return losses.full_softmax_ce(model.item_table.score_all(states), targets)
    if stage.loss == "sampled":
        return losses.sampled_softmax_logq(
            states, targets, model.item_table, stage.num_negatives, ctx.item_log_q, ctx.generator
        )
    raise ValueError(f"stage loss must be 'full' or 'sampled', got {stage.loss!r}")


def warmup_loss(model, batch: dict, stage: StageConfig, ctx: Context) -> tuple[Tensor, dict]:
    """Next-item loss at every position of the training sequences (no prompts); optionally
    (``tag_weight`` > 0, ours) an item-tag InfoNCE that lays the tags out in the item table, so the
    steer stage can move the user vector towards a tag through the same table it scores with."""
    H, _ = model.encode_history(batch["hist"])
    labels = batch["labels"]
    keep = labels > 0
    loss = _next_item_loss(model, H[keep], labels[keep], stage, ctx)
    logs = {"next_item": loss.item(), "positions": int(keep.sum())}
    if stage.tag_weight:
        items = torch.unique(torch.cat([batch["hist"].flatten(), labels.flatten()]))
        items = items[items > 0]
        tag_loss = losses.item_tag_infonce(model.item_table.lookup(items), ctx.item_tag[items], stage.temperature)
        loss = loss + stage.tag_weight * tag_loss
        logs["item_tags"] = tag_loss.item()
    logs["loss"] = loss.item()
    return loss, logs


def align_loss(model, batch: dict, stage: StageConfig, ctx: Context) -> tuple[Tensor, dict]:
    """InfoNCE between projected positive phrasings and the centroid of the tag they name."""
    z = model.projection(ctx.prompt_emb[batch["pos_prompt"]])
    centroids = ctx.tag_centroids(model.item_table.weight)
    loss = losses.align_infonce(z, batch["pos_tag"], centroids, stage.temperature)
    return loss, {"loss": loss.item()}


def steer_loss(model, batch: dict, stage: StageConfig, ctx: Context) -> tuple[Tensor, dict]:
    """Next-item CE under the prompt, + suppression of the excluded tag, (+ promotion of the
    requested tag, optional), + the router's polarity loss."""
    clause_emb, polarity = clause_inputs(batch["pos_prompt"], batch["neg_prompt"], ctx.prompt_emb)
    if stage.prompt_noise:
        # Training sees ~10 phrasings per polarity; jittering their embeddings on the unit sphere
        # keeps router and experts from keying on the exact training sentences (held-out wording).
        noise = torch.randn(clause_emb.shape, generator=ctx.generator).to(clause_emb)
        jittered = torch.nn.functional.normalize(clause_emb + stage.prompt_noise * noise, dim=-1)
        clause_emb = torch.where((polarity != 0).unsqueeze(-1), jittered, clause_emb)
    out = model(batch["hist"], clause_emb, polarity)
    scores = model.item_table.score_all(out.u)
    ce = losses.full_softmax_ce(scores, batch["target"])
    logs = {"ce": ce.item()}
    loss = ce
    negative = batch["neg_tag"] >= 0
    if stage.suppression_weight and negative.any():
        tag_mask = ctx.item_tag[:, batch["neg_tag"][negative]].T  # [b, N+1]
        sup = losses.suppression(scores[negative], tag_mask)
        loss = loss + stage.suppression_weight * sup
        logs["suppression"] = sup.item()
    positive = batch["pos_tag"] >= 0
    if stage.promotion_weight and positive.any():
        tag_mask = ctx.item_tag[:, batch["pos_tag"][positive]].T  # [b, N+1]
        promo = losses.promotion(scores[positive], tag_mask)
        loss = loss + stage.promotion_weight * promo
        logs["promotion"] = promo.item()
    if stage.router_weight and out.router_logits is not None:
        rl = losses.router_polarity_loss(out.router_logits, polarity)
        loss = loss + stage.router_weight * rl
        logs["router"] = rl.item()
    logs["loss"] = loss.item()
    return loss, logs


OBJECTIVES = {"warmup": warmup_loss, "align": align_loss, "steer": steer_loss}
