"""ShardedItemTable: the item table as a TorchRec EmbeddingCollection sharded over the ranks.

Training reads the table only through :meth:`lookup` (history items, sampled-softmax positives and
negatives) and updates it through TorchRec's KeyedJaggedTensor path: its backward runs TorchRec's
all-to-all and the FUSED optimizer (row-wise Adagrad or SGD), unclipped, on every micro-batch -- the
semantics the single-process path reproduces with ``dpr_dist.optim.RowWiseAdagrad``.

Why the update is deferred (``deferred_update=True``, the default): the fused kernel steps once per
TorchRec backward call, and one training step looks the table up several times (history, positives,
negatives). Passing each lookup straight through would step row-wise Adagrad once per lookup, so a
row seen by two lookups would get two accumulator updates instead of one on its summed gradient,
and the result would differ from the reference. So a training lookup returns the embeddings as a
leaf tensor, and :meth:`apply_gradients` (called by the loop after ``backward()``, where the
single-process loop calls its table optimizer's ``step()``) sends all of the micro-batch's ids and
gradients through ONE TorchRec forward/backward. Cost: one extra lookup all-to-all per step.
``deferred_update=False`` is the direct path, exact only when a step looks the table up once.

TorchRec divides the table gradient by the world size (the gradient of the mean of the ranks'
losses, as DeepSpeed does for the dense part): the trainer scales each rank's loss so that this mean
is the loss of the global batch.

No rank materialises the table: the catalogue-wide methods of ItemTable (full-softmax normaliser,
target ranks, top-k) gather the ranks' *queries* (small), score them against the local shard in
chunks and combine per-rank partial results (log-sum-exp, max, sum, merged top-k). The full
softmax is for a FROZEN table only: a shard's rows as a plain tensor have no path to the fused
optimizer, so it is refused on a trainable table (the table would silently stop training).
:meth:`full_weight` / :meth:`score_all` GATHER the table on every rank and are for small
catalogues only (tests, evaluation baselines of ML-sized data): above ``gather_limit_rows`` they
raise, and under autograd on a trainable table too.

Padding row 0: ids 0 are never sent to TorchRec (their output is a constant zero), so row 0 gets
no gradient and stays zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from dpr_dist.modules.catalogue import CHUNK_ROWS as SCORE_CHUNK_ROWS
from dpr_dist.modules.catalogue import merge_topk, stack_logsumexp
from dpr_dist.modules.item_init import BLOCK_ROWS, check_fixed_columns, initial_rows, with_fixed_columns
from dpr_dist.modules.item_table import PAD_ID, ItemTable

SHARDING_TYPES = ("row_wise", "table_wise", "column_wise")
OPTIMIZERS = ("rowwise_adagrad", "sgd")
TABLE_NAME = "item"
FEATURE_NAME = "item_id"
DEFAULT_GATHER_LIMIT_ROWS = 262_144  # 64 MiB at d=64: ML-1M is 3,707 rows


@dataclass(frozen=True)
class LocalShard:
    """One shard held by this rank: a view of the fused kernel's weight (writes go to the table)."""

    row_start: int
    col_start: int
    tensor: Tensor

    @property
    def row_end(self) -> int:
        return self.row_start + self.tensor.shape[0]

    @property
    def col_end(self) -> int:
        return self.col_start + self.tensor.shape[1]


class ShardedItemTable(ItemTable):
    """Needs an initialised default process group (``env.init_distributed``); a world of 1 works."""

    def __init__(
        self,
        num_items: int,
        dim: int,
        *,
        sharding: str = "row_wise",
        optimizer: str = "rowwise_adagrad",
        lr: float = 0.05,
        eps: float = 1e-8,
        seed: int = 0,
        init_weight: Tensor | None = None,
        device: str = "cpu",
        gather_limit_rows: int = DEFAULT_GATHER_LIMIT_ROWS,
        deferred_update: bool = True,
        fixed_columns: Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_items < 1 or dim < 1:
            raise ValueError(f"ShardedItemTable needs num_items >= 1 and dim >= 1, got {num_items}, {dim}")
        if dim % 4:
            # fbgemm's table kernels assert this deep inside the sharding plan; say it in our terms.
            raise ValueError(f"the sharded item table needs a dim divisible by 4 (fbgemm kernels), got {dim}: "
                             "set model.hidden accordingly (with tag_features: learned + tag columns)")
        if sharding not in SHARDING_TYPES:
            raise ValueError(f"sharding {sharding!r}; allowed: {', '.join(SHARDING_TYPES)}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"table optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if not dist.is_initialized():
            raise RuntimeError("ShardedItemTable needs a process group: call dpr_dist.distributed.env.init_distributed() first")
        if init_weight is not None and tuple(init_weight.shape) != (num_items + 1, dim):
            raise ValueError(f"init_weight shape {tuple(init_weight.shape)} != (num_items + 1, dim) = {(num_items + 1, dim)}")
        check_fixed_columns(fixed_columns, num_items + 1, dim)
        if fixed_columns is not None and not deferred_update:
            raise ValueError("fixed_columns need deferred_update=True (their gradient is cut before the fused update)")
        self.fixed = 0 if fixed_columns is None else fixed_columns.shape[1]
        self.sharding = sharding
        self.gather_limit_rows = gather_limit_rows
        self.deferred_update = deferred_update
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._num_rows, self._dim = num_items + 1, dim
        self._device = torch.device(device)
        self.collection = _build_sharded_collection(self._num_rows, dim, sharding, optimizer, lr, eps, self._device)
        self._shards, self._full_width = _local_shards(self.weight_shards_tensor(), dim)
        self._initialise(init_weight, seed, fixed_columns)

    # ---- ItemTable interface -------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self._num_rows

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._device

    def local_shards(self) -> list[LocalShard]:
        """The shards this rank holds (views of the fused kernel's weights: writes go to the table)."""
        return list(self._shards)

    def lookup(self, ids: Tensor) -> Tensor:
        """Collective (every rank calls it the same number of times). ids [...] -> [..., d]."""
        flat = ids.reshape(-1).to(self._device)
        real = flat != PAD_ID
        real_ids = flat[real]
        trains = not self.frozen and torch.is_grad_enabled()
        if trains and self.deferred_update:
            self._refuse_stale_gradients()
            with torch.no_grad():
                values = self._collection_lookup(real_ids)
            values.requires_grad_()  # a leaf: backward stops here, apply_gradients() carries it on
            self._pending.append((real_ids, values))
        elif trains:
            values = self._collection_lookup(real_ids)
        else:  # frozen or evaluation: no autograd edge into TorchRec, so no fused update can happen
            with torch.no_grad():
                values = self._collection_lookup(real_ids)
        out = values.new_zeros(flat.numel(), self._dim).index_copy(0, real.nonzero().squeeze(1), values)
        return out.reshape(*ids.shape, self._dim)

    def apply_gradients(self) -> int:
        """Collective; call once after every backward (deferred_update=True). Sends the gradients of all
        of this micro-batch's lookups through ONE TorchRec forward/backward, so the fused optimizer
        steps once with the summed gradient of each row -- as RowWiseAdagrad does in one process.
        Returns the number of ids sent (this rank). No-op for a frozen table."""
        if self.frozen or not self.deferred_update:
            self._pending.clear()
            return 0
        empty_ids = torch.zeros(0, dtype=torch.long, device=self._device)
        ids = torch.cat([i for i, _ in self._pending]) if self._pending else empty_ids
        grads = [v.grad if v.grad is not None else torch.zeros_like(v) for _, v in self._pending]
        grad = torch.cat(grads) if grads else torch.zeros(0, self._dim, device=self._device)
        if self.fixed:
            grad[:, self._dim - self.fixed :] = 0.0  # fixed feature columns never train
        self._pending.clear()
        with torch.enable_grad():
            replay = self._collection_lookup(ids)
        replay.backward(grad)  # TorchRec all-to-all backward + fused optimizer update
        return int(ids.numel())

    def _refuse_stale_gradients(self) -> None:
        if any(v.grad is not None for _, v in self._pending):
            raise RuntimeError(
                "ShardedItemTable: a backward ran since the last lookups but apply_gradients() was not "
                "called: the item table would silently not train"
            )

    def _collection_lookup(self, ids: Tensor) -> Tensor:
        from torchrec import KeyedJaggedTensor

        # One sample per id. A rank with no id still sends one empty sample: TorchRec cannot rebuild
        # the output of a batch of zero samples (stride 0), and every rank must join the all-to-all.
        lengths = torch.ones(ids.numel(), dtype=torch.int64, device=ids.device)
        if ids.numel() == 0:
            lengths = torch.zeros(1, dtype=torch.int64, device=ids.device)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=[FEATURE_NAME], values=ids, lengths=lengths)
        return self.collection(kjt)[FEATURE_NAME].values()

    def score_all(self, u: Tensor) -> Tensor:
        """GATHERS the table (small catalogues only); no gradient reaches the table."""
        if torch.is_grad_enabled() and not self.frozen:
            raise RuntimeError(
                "ShardedItemTable.score_all scores a gathered copy, which gives the table no gradient: "
                "train a sharded table with the sampled-softmax loss (stage loss: sampled), or call "
                "score_all under torch.no_grad() / with the table frozen"
            )
        return u @ self.full_weight().T

    def full_weight(self) -> Tensor:
        """The whole table on every rank (detached); refused above ``gather_limit_rows`` rows."""
        if self._num_rows > self.gather_limit_rows:
            raise RuntimeError(
                f"ShardedItemTable.full_weight: {self._num_rows} rows exceed gather_limit_rows="
                f"{self.gather_limit_rows}; rank with topk()/target_ranks() and sum rows with weighted_rows()"
            )
        full = torch.zeros(self._num_rows, self._dim, device=self._device)
        for shard in self._shards:
            full[shard.row_start : shard.row_end, shard.col_start : shard.col_end] = shard.tensor.detach()
        dist.all_reduce(full)  # every element is held by exactly one rank, the others add zeros
        return full

    def weighted_rows(self, weights: Tensor) -> Tensor:
        """weights [T, num_rows] (the same on every rank) -> weights @ E [T, d], computed shard-locally
        (e.g. tag centroids) without gathering the table. Detached. Collective."""
        if weights.shape[-1] != self._num_rows:
            raise ValueError(f"weighted_rows: weights have {weights.shape[-1]} columns, the table {self._num_rows} rows")
        weights = weights.to(self._device, torch.float32)
        out = torch.zeros(weights.shape[0], self._dim, device=self._device)
        for shard in self._shards:
            out[:, shard.col_start : shard.col_end] += weights[:, shard.row_start : shard.row_end] @ shard.tensor.detach()
        dist.all_reduce(out)
        return out

    # ---- the hooks of ItemTable's catalogue-wide methods ----------------------------------------
    def _row_blocks(self):
        if not self._full_width:
            raise NotImplementedError(
                "the shard-local full softmax needs whole rows on each rank; column_wise sharding supports "
                "lookups (sampled softmax), ranking and top-k: use row_wise or table_wise sharding"
            )
        if torch.is_grad_enabled() and not self.frozen:
            # A shard's rows as a plain tensor have no path to the fused optimizer: a full softmax
            # over them would silently stop training the table.
            raise RuntimeError(
                "ShardedItemTable: a full-catalogue softmax over a trainable sharded table would give the "
                "table no gradient (its update is fused into TorchRec's backward): train the table with "
                "the sampled-softmax loss (stage loss: sampled), or freeze it for this stage"
            )
        for shard in self._shards:
            yield shard.row_start, shard.tensor.detach()

    def _score_chunks(self, queries: Tensor):
        if self._full_width:
            for shard in self._shards:
                for lo in range(0, shard.tensor.shape[0], SCORE_CHUNK_ROWS):
                    yield shard.row_start + lo, queries @ shard.tensor[lo : lo + SCORE_CHUNK_ROWS].detach().T
            return
        # Column-wise: each rank holds some columns of every row. Every rank sums the partial dot
        # products of every chunk (a collective), and chunk c is counted by rank c % world only, so
        # that _combine(..., "sum") adds each chunk once.
        rank, world = dist.get_rank(), dist.get_world_size()
        for index, start in enumerate(range(0, self._num_rows, SCORE_CHUNK_ROWS)):
            end = min(start + SCORE_CHUNK_ROWS, self._num_rows)
            partial = torch.zeros(queries.shape[0], end - start, device=queries.device)
            for shard in self._shards:
                lo, hi = max(start, shard.row_start), min(end, shard.row_end)
                if lo < hi:
                    rows = shard.tensor[lo - shard.row_start : hi - shard.row_start].detach()
                    partial[:, lo - start : hi - start] += queries[:, shard.col_start : shard.col_end] @ rows.T
            dist.all_reduce(partial)
            if index % world == rank:
                yield start, partial

    def _gather(self, x: Tensor) -> Tensor:
        """Every rank's x concatenated along dim 0 in rank order, padded to the largest part (ranks
        may hold unequal numbers of queries); differentiable (see :class:`_GatherRows`)."""
        x = x.to(self._device)
        sizes = torch.tensor([x.shape[0]], device=self._device)
        self._gather_sizes = [int(s) for s in _all_gather_plain(sizes)]
        longest = max(self._gather_sizes)
        padded = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])]) if longest > x.shape[0] else x
        parts = _GatherRows.apply(padded).split(longest) if x.requires_grad else _all_gather_plain(padded)
        return torch.cat([part[:size] for part, size in zip(parts, self._gather_sizes)])

    def _local(self, x: Tensor) -> Tensor:
        rank = dist.get_rank()
        start = sum(self._gather_sizes[:rank])
        return x[start : start + self._gather_sizes[rank]]

    def _combine(self, x: Tensor, op: str) -> Tensor:
        if op == "logsumexp":
            parts = _GatherRows.apply(x).split(x.shape[0]) if x.requires_grad else _all_gather_plain(x)
            return stack_logsumexp(list(parts))
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return x

    def _combine_topk(self, values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
        all_values, all_ids = _all_gather_plain(values), _all_gather_plain(ids)
        return merge_topk(torch.cat(all_values, 1), torch.cat(all_ids, 1), k)

    # ---- optimizer and checkpoint state --------------------------------------------------------
    def set_learning_rate(self, lr: float) -> None:
        """The fused optimizer reads param_groups' lr when zero_grad()/step() is called on it."""
        optimizer = self.collection.fused_optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()

    def state_for_checkpoint(self) -> dict:
        """Sharded weights and fused-optimizer state, for torch.distributed.checkpoint (see table_checkpoint)."""
        return {"weights": self.collection.state_dict(), "optimizer": self.collection.fused_optimizer.state_dict()}

    def weight_shards_tensor(self):
        """The table's ShardedTensor (views of the fused kernel's weights)."""
        suffix = f"{TABLE_NAME}.weight"
        matches = [v for k, v in self.collection.state_dict().items() if k.endswith(suffix)]
        if len(matches) != 1:
            raise RuntimeError(f"expected one '*{suffix}' entry in the sharded state_dict, found {len(matches)}")
        return matches[0]

    @torch.no_grad()
    def _initialise(self, init_weight: Tensor | None, seed: int, fixed_columns: Tensor | None) -> None:
        # Block by block, so the transient memory is one block, not a second copy of the shard. The
        # chunks follow the generator's block boundaries: a shard that starts mid-block would
        # otherwise draw two blocks for every one it keeps.
        for shard in self._shards:
            lo = shard.row_start
            while lo < shard.row_end:
                hi = min((lo // BLOCK_ROWS + 1) * BLOCK_ROWS, shard.row_end)
                if init_weight is not None:
                    rows = init_weight[lo:hi]
                else:
                    rows = initial_rows(lo, hi, self._num_rows, self._dim, seed)
                if fixed_columns is not None:
                    rows = with_fixed_columns(rows, fixed_columns[lo:hi])
                shard.tensor[lo - shard.row_start : hi - shard.row_start] = rows[:, shard.col_start : shard.col_end]
                lo = hi
            if shard.row_start <= PAD_ID < shard.row_end:
                shard.tensor[PAD_ID - shard.row_start].zero_()


def _build_sharded_collection(num_rows: int, dim: int, sharding: str, optimizer: str, lr: float, eps: float, device: torch.device):
    import torchrec.optim as trec_optim
    from torchrec import EmbeddingCollection, EmbeddingConfig
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    # Built on "meta": DMP allocates only this rank's shard, never the whole table.
    collection = EmbeddingCollection(
        tables=[EmbeddingConfig(name=TABLE_NAME, embedding_dim=dim, num_embeddings=num_rows, feature_names=[FEATURE_NAME])],
        device=torch.device("meta"),
    )
    if optimizer == "rowwise_adagrad":
        apply_optimizer_in_backward(trec_optim.RowWiseAdagrad, collection.parameters(), {"lr": lr, "eps": eps})
    else:
        apply_optimizer_in_backward(torch.optim.SGD, collection.parameters(), {"lr": lr})
    world = dist.get_world_size()
    group = dist.group.WORLD
    sharders = [EmbeddingCollectionSharder()]
    planner = EmbeddingShardingPlanner(
        topology=TopologyFactory.create_topology(
            trainer_config=TrainerConfig(world_size=world, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world))),
            kernel_config=KernelConfig(compute_device=device.type),
        ),
        # "fused": FBGEMM's kernel with the optimizer inside backward (the dense kernel fails for
        # model-parallel sharding on CPU, ENV_NOTES.md).
        constraints={TABLE_NAME: ParameterConstraints(sharding_types=[sharding], compute_kernels=["fused"])},
    )
    plan = planner.collective_plan(collection, sharders, group)
    return DistributedModelParallel(
        module=collection, device=device, plan=plan, sharders=sharders, env=ShardingEnv.from_process_group(group)
    )


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 (equal shapes on every rank) with a gradient: a rank's part gets the
    sum of every rank's gradient for it. Backward is an all-reduce of the whole (small) gradient,
    which gloo supports, on a contiguous copy (torch.distributed.nn's all_gather mis-routes a
    non-contiguous gradient on gloo: seen with torch 2.13)."""

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(_all_gather_plain(x))

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _all_gather_plain(x: Tensor) -> list[Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


def _local_shards(sharded, dim: int) -> tuple[list[LocalShard], bool]:
    shards = [
        LocalShard(int(s.metadata.shard_offsets[0]), int(s.metadata.shard_offsets[1]), s.tensor)
        for s in sharded.local_shards()
    ]
    # From the global metadata, so every rank takes the same branch in the catalogue-wide methods.
    full_width = all(int(m.shard_sizes[1]) == dim for m in sharded.metadata().shards_metadata)
    return shards, full_width
