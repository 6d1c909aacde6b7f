"""Training losses of the three stages (DPR_SPEC.md "Training stages").

Every loss returns a :class:`Term` (sum over its rows and their number), so the trainer can normalise
by the global batch on any number of ranks. Id 0 is the padding item everywhere: never a target,
never a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dpr_dist.modules.catalogue import ALL, TAGGED, UNTAGGED
from dpr_dist.modules.item_table import PAD_ID, ItemTable
from dpr_dist.modules.routing import NEGATIVE, NEGATIVE_GROUP, POSITIVE, POSITIVE_GROUP

SUPPRESSION_MODES = ("log_complement", "mass")


@dataclass
class Term:
    """A loss term as the sum over the rows it covers and their number.

    The trainer divides by the number of rows in the GLOBAL batch (summed over ranks), so a term
    whose rows are spread unevenly over the ranks (real positions, negative prompts) is still the
    mean over the global batch, exactly as on one process. ``mean()`` is that value on one process.
    """

    total: Tensor  # scalar, attached to the graph
    count: Tensor  # float64 scalar, no gradient

    def mean(self) -> Tensor:
        return self.total / self.count.clamp(min=1.0)


def _term(per_row: Tensor, like: Tensor) -> Term:
    # A batch with no rows still returns a loss attached to the graph, so backward() and the
    # distributed gradient reduction see the same parameters at every step.
    count = torch.tensor(float(per_row.numel()), dtype=torch.float64)
    return Term(per_row.sum() if per_row.numel() else like.sum() * 0.0, count)


def target_logits(item_table: ItemTable, u: Tensor, targets: Tensor) -> Tensor:
    """u . e_target per row, the target's embedding read through the table (sharded or not)."""
    return (u * item_table.lookup(targets)).sum(-1)


def full_softmax_ce(item_table: ItemTable, u: Tensor, targets: Tensor) -> Term:
    """Cross-entropy over the whole catalogue (padding excluded from the softmax).

    u [..., d], targets [...] with 0 = padding (ignored). The normaliser comes from
    ``item_table.catalogue_logsumexp``, which never builds the [rows, N+1] score matrix.
    """
    u = u.reshape(-1, u.shape[-1])
    targets = targets.reshape(-1)
    keep = targets != PAD_ID
    u, targets = u[keep], targets[keep]
    return softmax_ce(item_table.catalogue_logsumexp(u), target_logits(item_table, u, targets))


def softmax_ce(lse: Tensor, target_logit: Tensor) -> Term:
    """CE from the catalogue normaliser: lse [1 or 3, B] (row ALL is used), target_logit [B]."""
    return _term(lse[ALL] - target_logit, target_logit)


class NegativeSampler:
    """Draws negative ids with replacement from q, never padding, by inverse CDF in float64.

    Not torch.multinomial, which refuses more than 2^24 categories (catalogues of 17M+ items) and
    redoes a pass over q at every call. The CDF is built once here (O(N)); each draw is then
    O(k log N), which matters at tens of millions of items where the pass cost ~0.1 s per step.
    """

    def __init__(self, item_log_q: Tensor):
        self.log_q = item_log_q  # [N+1]: the logQ correction that matches these draws
        probs = item_log_q.detach().cpu().double().exp()
        probs[PAD_ID] = 0.0
        self._cdf = torch.cumsum(probs, 0)
        self._total = self._cdf[-1:]
        # u * total can round up to total: such a draw goes to the last item that can be drawn.
        self._last_drawable = torch.searchsorted(self._cdf, self._total)
        self._device = item_log_q.device

    def draw(self, num_negatives: int, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(num_negatives, generator=generator, dtype=torch.float64)
        ids = torch.searchsorted(self._cdf, u * self._total, right=True)
        return torch.minimum(ids, self._last_drawable).to(self._device)


def sampled_softmax_logq(
    u: Tensor,
    pos_ids: Tensor,
    item_table: ItemTable,
    negative_ids: Tensor,
    item_log_q: Tensor,
) -> Term:
    """Sampled softmax with logQ correction (Jean et al. 2015; Yi et al. 2019).

    u [..., d] user vectors, pos_ids [...] (0 = padding, ignored), negative_ids [k] shared by every
    row (drawn by a :class:`NegativeSampler`, built once per run, from ``item_log_q``), item_log_q
    [N+1] the log probability with which each item is drawn (row 0 unused). Every logit, the
    positive's included, is ``u . e_i - log q_i``, which makes the sampled softmax an unbiased
    estimate of the full one; a negative equal to the row's positive (accidental hit) is masked out.
    Embeddings are read only through ``item_table.lookup``, so a sharded table serves them and only
    those rows get gradient. Ranks that draw with the same generator state share the negatives of
    the global batch.
    """
    dim = u.shape[-1]
    u = u.reshape(-1, dim)
    pos = pos_ids.reshape(-1)
    keep = pos != PAD_ID
    u, pos = u[keep], pos[keep]
    negative_ids = negative_ids.to(pos.device)
    pos_logit = (u * item_table.lookup(pos)).sum(-1, keepdim=True) - item_log_q[pos].unsqueeze(-1)
    neg_logits = u @ item_table.lookup(negative_ids).T - item_log_q[negative_ids]
    neg_logits = neg_logits.masked_fill(negative_ids.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], dim=1)
    return _term(torch.logsumexp(logits, dim=1) - logits[:, 0], u)


def suppression(lse: Tensor, tag_ids: Tensor, mode: str = "log_complement") -> Term:
    """Penalise the softmax mass on the items carrying the tag a row suppresses.

    lse [3, B] from ``item_table.catalogue_logsumexp(u, item_tag, tag_ids)``; rows with tag -1 (no
    negative prompt) are left out. mode "log_complement" (default): -log(1 - mass) =
    lse(all) - lse(untagged), which keeps a strong gradient while most of the mass is still on
    tagged items, where "mass" (the plain mass) saturates.
    """
    if mode not in SUPPRESSION_MODES:
        raise ValueError(f"suppression mode {mode!r}; allowed: {', '.join(SUPPRESSION_MODES)}")
    rows = tag_ids >= 0
    if mode == "mass":
        return _term(torch.exp(lse[TAGGED, rows] - lse[ALL, rows]), lse)
    return _term(lse[ALL, rows] - lse[UNTAGGED, rows], lse)


def promotion(lse: Tensor, tag_ids: Tensor) -> Term:
    """-log of the softmax mass on items carrying the tag a positive prompt asks for (ours; off by
    default): lse(all) - lse(tagged). The mirror of :func:`suppression`: it teaches the steered vector
    to put the catalogue's mass on the requested tag, which next-item CE alone does only through one
    target per case. lse [3, B] as for suppression; rows with tag -1 are left out."""
    rows = tag_ids >= 0
    return _term(lse[ALL, rows] - lse[TAGGED, rows], lse)


def item_tag_infonce(item_emb: Tensor, item_tags: Tensor, temperature: float = 0.1) -> Term:
    """Pull items towards the centroids of their own tags, away from other tags' centroids (ours).

    item_emb [M, d] (the distinct items of a batch), item_tags Bool [M, T]. Centroids are the mean
    embedding of the batch's items per tag (not detached), so the loss shapes the table's geometry
    without any extra parameters; a multi-tag item spreads its target evenly over its tags.
    Untagged items and tags absent from the batch are left out. On several ranks each rank uses the
    centroids of its own slice of the batch (the term is then not identical to one process's).
    """
    tags = item_tags.to(item_emb.dtype)
    present = tags.sum(0) > 0
    tagged = tags.sum(1) > 0
    if not bool(present.any()) or not bool(tagged.any()):
        return _term(item_emb[:0, 0], item_emb)
    tags = tags[tagged][:, present]
    emb = item_emb[tagged]
    centroids = (tags.T @ emb) / tags.sum(0).unsqueeze(1)
    logits = F.normalize(emb, dim=-1) @ F.normalize(centroids, dim=-1).T / temperature
    target = tags / tags.sum(1, keepdim=True)
    return _term(-(target * F.log_softmax(logits, dim=-1)).sum(1), item_emb)


def align_infonce(
    z: Tensor, tag_ids: Tensor, tag_centroids: Tensor, temperature: float = 0.1, similarity: str = "cosine"
) -> Term:
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
    return _term(F.cross_entropy(logits[keep] / temperature, tag_ids[keep], reduction="none"), z)


def router_polarity_loss(router_logits: Tensor, polarity: Tensor) -> Term:
    """Cross-entropy of the router's group logits [B, C, 2] against the clause labels [B, C];
    only clauses labelled +1 / -1 count (0 = no clause, 2 = unlabelled)."""
    labelled = (polarity == POSITIVE) | (polarity == NEGATIVE)
    target = torch.where(polarity == POSITIVE, POSITIVE_GROUP, NEGATIVE_GROUP)
    return _term(F.cross_entropy(router_logits[labelled], target[labelled], reduction="none"), router_logits)
