"""Deterministic inputs shared by the distributed workers and the in-process reference of the tests.

A "global batch" of step t is the concatenation of the ranks' slices batch(t, 0..WORLD-1). The loss
of a step is the sampled softmax with logQ correction (dpr_dist.losses) where the user vector reads
the table too (mean of the history embeddings), so one step looks the table up three times:
history, positives and negatives -- with padding ids, duplicates and ids shared between lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dpr_dist.modules.item_init import initial_weight
from dpr_dist.losses import sampled_softmax_logq

NUM_ITEMS = 400
DIM = 16
WIDE_DIM = 256  # for column-wise sharding
WORLD = 2
LOCAL_BATCH = 4
HISTORY = 6
NEGATIVES = 24
LR = 0.05
EPS = 1e-8
SEED = 7
STEPS = 3


@dataclass
class Batch:
    history: Tensor   # [B, L], 0 = padding
    positives: Tensor  # [B], 0 = padding (ignored by the loss)
    negatives: Tensor  # [NEGATIVES]
    user: Tensor      # [B, d], the dense part of the user vector


def init_weight() -> Tensor:
    return initial_weight(NUM_ITEMS + 1, DIM, SEED)


def item_log_q() -> Tensor:
    return torch.full((NUM_ITEMS + 1,), -math.log(NUM_ITEMS))


def batch(step: int, rank: int) -> Batch:
    g = torch.Generator().manual_seed(10_000 + 100 * step + rank)
    history = torch.randint(1, NUM_ITEMS + 1, (LOCAL_BATCH, HISTORY), generator=g)
    history[:, :2] = torch.randint(1, 6, (LOCAL_BATCH, 2), generator=g)  # popular ids: duplicates across ranks
    history[0, : 1 + rank] = 0                                           # left padding, unequal per rank
    positives = torch.randint(1, NUM_ITEMS + 1, (LOCAL_BATCH,), generator=g)
    positives[1] = history[1, 0]                                         # an id in two lookups
    if rank == 1:
        positives[3] = 0                                                 # a padded target on one rank only
    negatives = torch.randint(1, NUM_ITEMS + 1, (NEGATIVES,), generator=g)
    negatives[:2] = torch.tensor([1, 2])
    user = torch.randn(LOCAL_BATCH, DIM, generator=g)
    return Batch(history, positives, negatives, user)


def loss(table, b: Batch, user_param: Tensor | None = None) -> Tensor:
    """``user_param`` (a leaf requiring grad) replaces ``b.user`` where a dense gradient is wanted."""
    user = b.user if user_param is None else user_param
    u = user + table.lookup(b.history).mean(1)
    return sampled_softmax_logq(u, b.positives, table, b.negatives, item_log_q()).mean()


def queries() -> Tensor:
    return torch.randn(5, DIM, generator=torch.Generator().manual_seed(99))


def query_history() -> Tensor:
    g = torch.Generator().manual_seed(98)
    h = torch.randint(1, NUM_ITEMS + 1, (5, 8), generator=g)
    h[0, :3] = 0
    return h


def tag_weights() -> Tensor:
    """[3, N+1] 0/1 item-tag matrix, as used for tag centroids."""
    return (torch.rand(3, NUM_ITEMS + 1, generator=torch.Generator().manual_seed(97)) < 0.3).float()


def rank_queries(rank: int) -> Tensor:
    """Rank r holds 3 + 2r queries: unequal parts, as when ranks keep different numbers of rows."""
    return torch.randn(3 + 2 * rank, DIM, generator=torch.Generator().manual_seed(90 + rank))


def catalogue_case(rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(item_tag [N+1, 4], tag id per query (-1 = none), targets, histories) for rank_queries(rank)."""
    n = 3 + 2 * rank
    g = torch.Generator().manual_seed(80 + rank)
    tags = torch.rand(NUM_ITEMS + 1, 4, generator=torch.Generator().manual_seed(79)) < 0.3
    tag_ids = torch.randint(-1, 4, (n,), generator=g)
    targets = torch.randint(1, NUM_ITEMS + 1, (n,), generator=g)
    history = torch.randint(0, NUM_ITEMS + 1, (n, 9), generator=g)
    history[0, 0] = targets[0]  # a target consumed before stays rankable
    return tags, tag_ids, targets, history


def catalogue_loss(lse: Tensor, plain_lse: Tensor) -> Tensor:
    """Uses every row of the normalisers (weights make a wrong routing of gradients visible)."""
    finite = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return (finite * torch.tensor([[1.0], [0.5], [-0.7]])).sum() + 0.3 * plain_lse.sum()
