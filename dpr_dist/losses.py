"""Training losses of the three stages (DPR_SPEC.md "Training stages").

Column / id 0 is the padding item everywhere: it is never a target and never a candidate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dpr_dist.modules.item_table import PAD_ID, ItemTable
from dpr_dist.modules.routing import NEGATIVE, NEGATIVE_GROUP, POSITIVE, POSITIVE_GROUP

SUPPRESSION_MODES = ("log_complement", "mass")


def _mask_padding_column(scores: Tensor) -> Tensor:
    return scores.index_fill(-1, torch.tensor([PAD_ID], device=scores.device), float("-inf"))


def _mean_or_zero(values: Tensor, like: Tensor) -> Tensor:
    # A batch with nothing to average still returns a loss attached to the graph, so backward()
    # and distributed gradient reduction see the same parameters every step.
    return values.mean() if values.numel() else like.sum() * 0.0


def full_softmax_ce(scores: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the whole catalogue.

    scores [..., N+1] (e.g. [B, N+1] or per position [B, L, N+1]), targets LongTensor [...] with
    0 = padding (ignored). The padding column is excluded from the softmax. Mean over real targets.
    """
    flat = scores.reshape(-1, scores.shape[-1])
    flat_targets = targets.reshape(-1)
    # logsumexp over the columns 1..N view instead of a masked copy of the (large) score matrix.
    per_row = torch.logsumexp(flat[:, PAD_ID + 1 :], dim=1) - flat.gather(1, flat_targets.unsqueeze(1)).squeeze(1)
    return _mean_or_zero(per_row[flat_targets != PAD_ID], scores)


def sample_negatives(item_log_q: Tensor, num_negatives: int, generator: torch.Generator | None) -> Tensor:
    """num_negatives ids drawn with replacement from q (shared by the whole batch)."""
    probs = item_log_q.exp().index_fill(0, torch.tensor([PAD_ID]), 0.0)
    return torch.multinomial(probs, num_negatives, replacement=True, generator=generator)


def sampled_softmax_logq(
    u: Tensor,
    pos_ids: Tensor,
    item_table: ItemTable,
    num_negatives: int,
    item_log_q: Tensor,
    generator: torch.Generator | None = None,
    negative_ids: Tensor | None = None,
) -> Tensor:
    """Sampled softmax with logQ correction (Jean et al. 2015; Yi et al. 2019).

    u [..., d] user vectors, pos_ids [...] (0 = padding, ignored), item_log_q [N+1] the log
    probability with which each item is drawn as a negative (row 0 unused). One set of
    ``num_negatives`` ids is drawn per call and shared by every row; ``negative_ids`` replaces
    the draw (tests, or a caller-side sampler). Every logit, the positive's included, is
    ``u . e_i - log q_i``, which makes the sampled softmax an unbiased estimate of the full one; a
    negative equal to the row's positive (accidental hit) is masked out. Embeddings are read only
    through ``item_table.lookup``, so a sharded table serves them and only those rows get gradient.
    """
    dim = u.shape[-1]
    u = u.reshape(-1, dim)
    pos = pos_ids.reshape(-1)
    keep = pos != PAD_ID
    u, pos = u[keep], pos[keep]
    if negative_ids is None:
        negative_ids = sample_negatives(item_log_q, num_negatives, generator)
    negative_ids = negative_ids.to(pos.device)
    pos_logit = (u * item_table.lookup(pos)).sum(-1, keepdim=True) - item_log_q[pos].unsqueeze(-1)
    neg_logits = u @ item_table.lookup(negative_ids).T - item_log_q[negative_ids]
    neg_logits = neg_logits.masked_fill(negative_ids.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], dim=1)
    return _mean_or_zero(torch.logsumexp(logits, dim=1) - logits[:, 0], u)


def suppression(scores: Tensor, tag_mask: Tensor, mode: str = "log_complement") -> Tensor:
    """Penalise the softmax mass on items carrying a suppressed tag.

    scores [B, N+1], tag_mask Bool [B, N+1] (True = item carries the tag this row suppresses).
    mode "log_complement" (default): -log(1 - mass), computed in log space as
    logsumexp(all) - logsumexp(untagged), which keeps a strong gradient while most of the mass is
    still on tagged items, where "mass" (the plain mean mass) saturates. Rows whose mask is empty
    (no negative prompt) are left out of the mean.
    """
    if mode not in SUPPRESSION_MODES:
        raise ValueError(f"suppression mode {mode!r}; allowed: {', '.join(SUPPRESSION_MODES)}")
    tag_mask = tag_mask.index_fill(-1, torch.tensor([PAD_ID], device=tag_mask.device), False)
    rows = tag_mask.any(dim=-1)
    scores, tag_mask = _mask_padding_column(scores)[rows], tag_mask[rows]
    log_total = torch.logsumexp(scores, dim=-1)
    if mode == "mass":
        mass = torch.exp(torch.logsumexp(scores.masked_fill(~tag_mask, float("-inf")), dim=-1) - log_total)
        return _mean_or_zero(mass, scores)
    log_untagged = torch.logsumexp(scores.masked_fill(tag_mask, float("-inf")), dim=-1)
    return _mean_or_zero(log_total - log_untagged, scores)


def promotion(scores: Tensor, tag_mask: Tensor) -> Tensor:
    """-log of the softmax mass on items carrying the tag a positive prompt asks for (ours; off by
    default). The mirror of :func:`suppression`: it teaches the steered vector to put the catalogue's
    mass on the requested tag, which next-item CE alone does only through one target per case.
    scores [B, N+1], tag_mask Bool [B, N+1]; rows with an empty mask are left out of the mean."""
    tag_mask = tag_mask.index_fill(-1, torch.tensor([PAD_ID], device=tag_mask.device), False)
    rows = tag_mask.any(dim=-1)
    scores, tag_mask = _mask_padding_column(scores)[rows], tag_mask[rows]
    log_tagged = torch.logsumexp(scores.masked_fill(~tag_mask, float("-inf")), dim=-1)
    return _mean_or_zero(torch.logsumexp(scores, dim=-1) - log_tagged, scores)


def item_tag_infonce(item_emb: Tensor, item_tags: Tensor, temperature: float = 0.1) -> Tensor:
    """Pull items towards the centroids of their own tags, away from other tags' centroids (ours).

    item_emb [M, d] (the distinct items of a batch), item_tags Bool [M, T]. Centroids are the mean
    embedding of the batch's items per tag (not detached), so the loss shapes the table's geometry
    without any extra parameters; a multi-tag item spreads its target evenly over its tags.
    Untagged items and tags absent from the batch are left out.
    """
    tags = item_tags.to(item_emb.dtype)
    present = tags.sum(0) > 0
    tagged = tags.sum(1) > 0
    if not bool(present.any()) or not bool(tagged.any()):
        return item_emb.sum() * 0.0
    tags = tags[tagged][:, present]
    emb = item_emb[tagged]
    centroids = (tags.T @ emb) / tags.sum(0).unsqueeze(1)
    logits = F.normalize(emb, dim=-1) @ F.normalize(centroids, dim=-1).T / temperature
    target = tags / tags.sum(1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=-1)).sum(1).mean()


def align_infonce(
    z: Tensor, tag_ids: Tensor, tag_centroids: Tensor, temperature: float = 0.1, similarity: str = "cosine"
) -> Tensor:
    """InfoNCE pulling each projected prompt z [B, d] onto its tag's centroid [T, d], with the other
    tags' centroids as negatives. tag_ids [B], -1 = ignored. similarity "cosine" (default; centroid
    norms vary with tag popularity) or "dot" (the retrieval space's own score)."""
    if similarity == "cosine":
        logits = F.normalize(z, dim=-1) @ F.normalize(tag_centroids, dim=-1).T
    elif similarity == "dot":
        logits = z @ tag_centroids.T
    else:
        raise ValueError(f"align_infonce similarity {similarity!r}; allowed: cosine, dot")
    keep = tag_ids >= 0
    if not bool(keep.any()):
        return z.sum() * 0.0
    return F.cross_entropy(logits[keep] / temperature, tag_ids[keep])


def router_polarity_loss(router_logits: Tensor, polarity: Tensor) -> Tensor:
    """Cross-entropy of the router's group logits [B, C, 2] against the clause labels [B, C];
    only clauses labelled +1 / -1 count (0 = no clause, 2 = unlabelled)."""
    labelled = (polarity == POSITIVE) | (polarity == NEGATIVE)
    if not bool(labelled.any()):
        return router_logits.sum() * 0.0
    target = torch.where(polarity == POSITIVE, POSITIVE_GROUP, NEGATIVE_GROUP)
    return F.cross_entropy(router_logits[labelled], target[labelled])
