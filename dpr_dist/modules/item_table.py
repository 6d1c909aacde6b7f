"""The item embedding table E, shared by history lookup (input) and catalogue scoring (output).

The model, the losses and validation only talk to the table through this interface, so a sharded
TorchRec table (dpr_dist.distributed.sharded_table) can replace :class:`PlainItemTable` without
touching them. Catalogue-wide work (softmax normaliser, target ranks, top-k) is written once here,
over *score chunks*: a table yields the chunks of the catalogue this process holds and says how to
combine partial results across processes (for the plain table: nothing to combine).
"""

from __future__ import annotations

import abc
from typing import Iterator

import torch
from torch import Tensor, nn

from dpr_dist.common.schema import PAD_ID  # row 0 is padding: always zero, never trained
from dpr_dist.modules import catalogue
from dpr_dist.modules.item_init import check_fixed_columns, initial_weight, with_fixed_columns


class ItemTable(nn.Module, abc.ABC):
    """Rows are item ids; row 0 is the padding row.

    Methods that take queries ``u`` are collective for a distributed table: every process calls them
    the same number of times, each with its own queries, and gets the results for its own queries.
    """

    # When True, lookups and scores are computed from a detached weight, so a stage that freezes
    # the table leaves it bit-identical even if its optimizer still steps (fused tables update
    # inside backward and ignore requires_grad; see DPR_SPEC.md "Training stages").
    frozen: bool = False
    # The last ``fixed`` columns hold given item features and are never trained (tag_features).
    fixed: int = 0

    @property
    @abc.abstractmethod
    def num_rows(self) -> int:
        """num_items + 1 (the padding row)."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Embedding size d."""

    @abc.abstractmethod
    def lookup(self, ids: Tensor) -> Tensor:
        """ids LongTensor[...] -> Tensor[..., d]; id 0 gives the zero padding row."""

    @abc.abstractmethod
    def score_all(self, u: Tensor) -> Tensor:
        """u [B, d] -> logits [B, num_rows]; column = item id (column 0 is padding). Materialises a
        [B, N+1] matrix: for evaluation baselines on catalogues that fit; training uses
        :meth:`catalogue_logsumexp`, which does not."""

    @abc.abstractmethod
    def weighted_rows(self, weights: Tensor) -> Tensor:
        """weights [T, num_rows] -> weights @ E, [T, d], detached (e.g. tag centroids)."""

    # ---- what a table provides for the catalogue-wide methods below -----------------------------
    @abc.abstractmethod
    def _row_blocks(self) -> Iterator[tuple[int, Tensor]]:
        """(first id, rows [n, d]) of every block of whole rows this process holds; rows carry the
        table's gradient unless the table is frozen."""

    @abc.abstractmethod
    def _score_chunks(self, queries: Tensor) -> Iterator[tuple[int, Tensor]]:
        """(first id, scores [G, c]) for chunks covering this process's share of the catalogue;
        across processes the shares partition the catalogue. No gradient."""

    def _gather(self, x: Tensor) -> Tensor:
        """Every process's queries (or per-query values), concatenated in rank order; differentiable."""
        return x

    def _local(self, x: Tensor) -> Tensor:
        """This process's part of a result over gathered queries (inverse of :meth:`_gather`)."""
        return x

    def _combine(self, x: Tensor, op: str) -> Tensor:
        """Combine per-process partial results: op "sum" or "max" (no gradient), or "logsumexp"
        over a leading axis of partial log-sum-exps (differentiable)."""
        return x

    # ---- catalogue-wide methods ------------------------------------------------------------------
    def catalogue_logsumexp(self, u: Tensor, item_tag: Tensor | None = None, tag_ids: Tensor | None = None) -> Tensor:
        """log-sum-exp of u . e_i over every real item: [1, B]; with ``item_tag`` (bool [N+1, T]) and
        ``tag_ids`` [B] (-1 = none), [3, B] = (all, items carrying the row's tag, the other items);
        rows catalogue.ALL / TAGGED / UNTAGGED. The softmax normaliser of the full-catalogue losses,
        differentiable in u and in the table (unless frozen), in O(B x chunk) memory."""
        queries = self._gather(u)
        all_tags = None if tag_ids is None else self._gather(tag_ids)
        blocks = [
            catalogue.block_logsumexp(queries, rows, row_start, None if item_tag is None else item_tag[row_start : row_start + rows.shape[0]], all_tags)
            for row_start, rows in self._row_blocks()
        ]
        if not blocks:  # a rank that holds no rows (table-wise sharding)
            blocks = [queries.new_full((1 if tag_ids is None else 3, queries.shape[0]), catalogue.NEG_INF) + 0 * queries.sum()]
        partial = catalogue.stack_logsumexp(blocks)
        return self._local(self._combine(partial, "logsumexp").T).T

    @torch.no_grad()
    def target_ranks(self, u: Tensor, targets: Tensor, history: Tensor) -> Tensor:
        """1-based pessimistic rank [B] of each target among the items not in ``history`` [B, L]
        (0 = padding; a target in its own history stays rankable): 1 + the number of other
        rankable items scoring at least as much."""
        queries, targets, history = self._gather(u.detach()), self._gather(targets), self._gather(history)
        target_score = queries.new_full((queries.shape[0],), catalogue.NEG_INF)
        for row_start, scores in self._score_chunks(queries):
            target_score = torch.maximum(target_score, catalogue.chunk_target_scores(scores, row_start, targets))
        target_score = self._combine(target_score, "max")
        counts = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
        for row_start, scores in self._score_chunks(queries):
            counts += catalogue.chunk_rank_counts(scores, row_start, target_score, targets, history)
        return self._local(self._combine(counts, "sum"))

    @torch.no_grad()
    def topk(self, u: Tensor, k: int, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Full-catalogue top-k (values [B, k], ids [B, k]), padding and ``history`` excluded; fewer
        than k candidates leave trailing (-inf, -1) entries. Ties: any order."""
        queries = self._gather(u.detach())
        exclude = None if history is None else catalogue.exclude_ids(self._gather(history))
        values, ids = catalogue.empty_topk(queries.shape[0], k, device=queries.device)
        for row_start, scores in self._score_chunks(queries):
            v, i = catalogue.block_topk(scores, row_start, k, exclude)
            values, ids = catalogue.merge_topk(torch.cat([values, v], 1), torch.cat([ids, i], 1), k)
        values, ids = self._combine_topk(values, ids, k)
        return self._local(values), self._local(ids)

    def _combine_topk(self, values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return values, ids


class PlainItemTable(ItemTable):
    """Single-process table backed by ``nn.Embedding(padding_idx=0)``.

    ``sparse=True`` makes lookups produce sparse gradients (RowWiseAdagrad accepts both); scoring
    always produces a dense gradient since it touches every row. ``seed`` draws the same initial
    rows as a sharded table with that seed (dpr_dist.modules.item_init), so both paths start alike.
    """

    def __init__(self, num_items: int, dim: int, sparse: bool = False, seed: int = 0,
                 fixed_columns: Tensor | None = None) -> None:
        super().__init__()
        if num_items < 1 or dim < 1:
            raise ValueError(f"PlainItemTable needs num_items >= 1 and dim >= 1, got {num_items}, {dim}")
        check_fixed_columns(fixed_columns, num_items + 1, dim)
        self.fixed = 0 if fixed_columns is None else fixed_columns.shape[1]
        self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=PAD_ID, sparse=sparse)
        weight = initial_weight(num_items + 1, dim, seed)
        if fixed_columns is not None:
            weight = with_fixed_columns(weight, fixed_columns)
        with torch.no_grad():
            self.embedding.weight.copy_(weight)
        # padding_idx only stops the lookup gradient; scoring also reaches row 0 (column 0 of the
        # logits), so its gradient is cut here to keep the padding row zero under any optimizer;
        # fixed feature columns get no gradient either (as the sharded table cuts it).
        self.embedding.weight.register_hook(lambda grad: _cut_grad(grad, self.fixed))

    @property
    def num_rows(self) -> int:
        return self.embedding.num_embeddings

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    @property
    def weight(self) -> Tensor:
        return self.embedding.weight.detach() if self.frozen else self.embedding.weight

    def lookup(self, ids: Tensor) -> Tensor:
        if self.frozen:
            return self.weight[ids]
        return self.embedding(ids)

    def score_all(self, u: Tensor) -> Tensor:
        return u @ self.weight.T

    def weighted_rows(self, weights: Tensor) -> Tensor:
        return weights.to(self.embedding.weight.dtype) @ self.embedding.weight.detach()

    def _row_blocks(self) -> Iterator[tuple[int, Tensor]]:
        yield 0, self.weight

    def _score_chunks(self, queries: Tensor) -> Iterator[tuple[int, Tensor]]:
        weight = self.embedding.weight.detach()
        for lo in range(0, weight.shape[0], catalogue.CHUNK_ROWS):
            yield lo, queries @ weight[lo : lo + catalogue.CHUNK_ROWS].T


def _cut_grad(grad: Tensor, fixed: int) -> Tensor | None:
    if grad.is_sparse:  # only lookups give sparse gradients, and padding_idx already drops row 0
        if not fixed:
            return None
        grad = grad.coalesce()
        values = grad.values().clone()
        values[:, values.shape[1] - fixed :] = 0.0
        # indices of a coalesced tensor: the invariants hold by construction, no need to check them
        return torch.sparse_coo_tensor(grad.indices(), values, grad.shape, is_coalesced=True,
                                       check_invariants=False)
    grad = grad.index_fill(0, torch.tensor([PAD_ID], device=grad.device), 0.0)
    if fixed:
        grad[:, grad.shape[1] - fixed :] = 0.0
    return grad
