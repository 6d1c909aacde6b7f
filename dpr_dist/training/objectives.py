"""What each training stage minimises, one function per stage (DPR_SPEC "Training stages").

Each takes the model, a batch from the shard reader, the stage config and the run's
:class:`Context`, and returns its loss terms ``{name: (weight, Term)}``; the trainer turns them into
one loss normalised by the global batch (dpr_dist.training.step). Which parameters a loss may move
is decided by the stage (frozen groups), not here. The item table is only reached through the
ItemTable interface, so the same objectives train a plain or a sharded table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dpr_dist import losses
from dpr_dist.data.clauses import clause_inputs
from dpr_dist.losses import Term
from dpr_dist.modules import NO_CLAUSE
from dpr_dist.training.config import StageConfig

Terms = dict[str, tuple[float, Term]]
SAMPLERS = ("popularity", "uniform")


@dataclass
class Context:
    """Tensors every stage needs besides the model: prompt embeddings, item tags, sampling q."""

    prompt_emb: Tensor       # float [P, prompt_dim]
    item_tag: Tensor         # bool [N+1, T]
    item_log_q: Tensor       # float [N+1]: log popularity sampling probability (sampled softmax)
    generator: torch.Generator  # negatives and prompt noise: the same state on every rank
    _centroids: dict = field(default_factory=dict, repr=False)
    _samplers: dict = field(default_factory=dict, repr=False)

    def log_q(self, sampler: str) -> Tensor:
        """log q [N+1] of a negative sampler (row 0, padding, is never drawn)."""
        return self.negative_sampler(sampler).log_q

    def negative_sampler(self, sampler: str) -> losses.NegativeSampler:
        """The named sampler (it carries its log q), built once per run: q is fixed, and building
        its CDF is a pass over the whole catalogue that would otherwise repeat at every step."""
        if sampler not in self._samplers:
            if sampler == "popularity":
                log_q = self.item_log_q
            elif sampler == "uniform":
                log_q = torch.full_like(self.item_log_q, -math.log(self.item_log_q.numel() - 1))
                log_q[0] = float("-inf")
            else:
                raise ValueError(f"stage sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
            self._samplers[sampler] = losses.NegativeSampler(log_q)
        return self._samplers[sampler]

    def tag_centroids(self, item_table) -> Tensor:
        """Mean item embedding of each tag [T, d] (detached: the target of alignment, not trained).
        Computed once per frozen table (the align stage), as it cannot change."""
        if item_table.frozen and self._centroids.get("table") is item_table:
            return self._centroids["value"]
        tags = self.item_tag.to(torch.float32)  # [N+1, T]
        counts = tags.sum(0).clamp(min=1)
        value = item_table.weighted_rows((tags / counts).T)
        self._centroids.update(table=item_table, value=value)
        return value


def _next_item_loss(model, states: Tensor, targets: Tensor, stage: StageConfig, ctx: Context) -> Term:
    if stage.loss == "full":
        return losses.full_softmax_ce(model.item_table, states, targets)
    if stage.loss == "sampled":
        sampler = ctx.negative_sampler(stage.sampler)
        negatives = sampler.draw(stage.num_negatives, ctx.generator)
        return losses.sampled_softmax_logq(states, targets, model.item_table, negatives, sampler.log_q)
    raise ValueError(f"stage loss must be 'full' or 'sampled', got {stage.loss!r}")


def warmup_loss(model, batch: dict, stage: StageConfig, ctx: Context) -> Terms:
    """Next-item loss at every position of the training sequences (no prompts); optionally
    (``tag_weight`` > 0, ours) an item-tag InfoNCE that lays the tags out in the item table, so the
    steer stage can move the user vector towards a tag through the same table it scores with."""
    H = model.encode_history(batch["hist"]).H
    labels = batch["labels"]
    keep = labels > 0
    terms: Terms = {"next_item": (1.0, _next_item_loss(model, H[keep], labels[keep], stage, ctx))}
    if stage.tag_weight:
        items = torch.unique(torch.cat([batch["hist"].flatten(), labels.flatten()]))
        items = items[items > 0]
        terms["item_tags"] = (stage.tag_weight, losses.item_tag_infonce(
            model.item_table.lookup(items), ctx.item_tag[items], stage.temperature))
    return terms


def align_loss(model, batch: dict, stage: StageConfig, ctx: Context) -> Terms:
    """InfoNCE between projected positive phrasings and the centroid of the tag they name."""
    z = model.projection(ctx.prompt_emb[batch["pos_prompt"]])
    centroids = ctx.tag_centroids(model.item_table)
    return {"infonce": (1.0, losses.align_infonce(z, batch["pos_tag"], centroids, stage.temperature))}


def jitter_prompts(clause_emb: Tensor, polarity: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Clause embeddings + N(0, std^2) noise, back on the unit sphere; padding slots untouched.

    Training sees ~10 phrasings per polarity, and MiniLM puts two phrasings of one tag about as far
    apart as two tags in one template (mean cosine 0.63 vs 0.58, ML-1M's positive templates); the
    jitter keeps projection, router and experts from keying on the exact training sentences
    (held-out wording). Cosine to the original ~ 1/sqrt(1 + std^2 D) for D dimensions.
    """
    noise = torch.randn(clause_emb.shape, generator=generator).to(clause_emb)
    jittered = torch.nn.functional.normalize(clause_emb + std * noise, dim=-1)
    return torch.where((polarity != NO_CLAUSE).unsqueeze(-1), jittered, clause_emb)


def steer_loss(model, batch: dict, stage: StageConfig, ctx: Context) -> Terms:
    """Next-item CE under the prompt, + suppression of the excluded tag, (+ promotion of the
    requested tag, optional), + the router's polarity loss."""
    clause_emb, polarity = clause_inputs(batch["pos_prompt"], batch["neg_prompt"], ctx.prompt_emb)
    if stage.prompt_noise:
        clause_emb = jitter_prompts(clause_emb, polarity, stage.prompt_noise, ctx.generator)
    out = model(batch["hist"], clause_emb, polarity)
    table = model.item_table
    # One catalogue pass gives the CE normaliser and the untagged mass of the suppressed tag.
    lse = table.catalogue_logsumexp(out.u, ctx.item_tag, batch["neg_tag"])
    terms: Terms = {"ce": (1.0, losses.softmax_ce(lse, losses.target_logits(table, out.u, batch["target"])))}
    if stage.suppression_weight:
        terms["suppression"] = (stage.suppression_weight, losses.suppression(lse, batch["neg_tag"]))
    if stage.promotion_weight:
        lse_pos = table.catalogue_logsumexp(out.u, ctx.item_tag, batch["pos_tag"])
        terms["promotion"] = (stage.promotion_weight, losses.promotion(lse_pos, batch["pos_tag"]))
    if stage.router_weight and out.router_logits is not None:
        terms["router"] = (stage.router_weight, losses.router_polarity_loss(out.router_logits, polarity))
    return terms


OBJECTIVES = {"warmup": warmup_loss, "align": align_loss, "steer": steer_loss}
