"""Deterministic, resumable, rank-consistent reading of one (split, kind) shard set.

Design: **every rank reads the same ordered stream and keeps its slice of each global batch.**

- Order: per epoch, the shard order is permuted and samples pass through a shuffle buffer, both
  seeded by (seed, epoch) only. ``shuffle=False`` (evaluation) keeps the manifest order.
- Global batch ``G`` is a sample-level notion: global batch i is samples ``[i*G, (i+1)*G)`` of the
  epoch's stream; rank r of W keeps ``[r*G/W, (r+1)*G/W)`` of it. So 1 rank and 2 ranks train on
  exactly the same global batches, and a checkpoint taken with W ranks resumes with any W' that
  divides G.
- Trade-off: each rank reads (and decodes) every sample, i.e. W times the I/O of splitting shards
  by node (``wds.split_by_node``). Decoding is a few ``np.frombuffer`` calls per sample, so this is
  cheap next to a training step for sequence data; the gain is exact, hang-free equivalence between
  world sizes. That is why the webdataset node/worker splitters used here hand every shard to
  everybody: the split happens at batch level, not shard level.
- DataLoader workers: worker w of n produces global batches w, w+n, ...; the DataLoader collects
  workers round-robin, so batches come out in stream order whatever n is.
- Steps per epoch are fixed from the manifest counts, identical on every rank: ``tail="drop"``
  (training) drops the last partial global batch; ``tail="pad"`` (evaluation) completes it by
  repeating the epoch's first samples and marks them ``valid = False``. A shard holding a different
  number of samples than the manifest says is an error on every rank at the same point, not a hang.
- Resume: the position is (epoch, samples consumed). Resuming re-reads the epoch's stream (the
  shuffle buffer must see the same samples to make the same choices) and skips the consumed batches
  without collating them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dpr_dist.common import schema
from dpr_dist.data.batching import Sample, collate_cases

TAILS = ("drop", "pad")


def _every_shard(urls):
    """Node/worker splitter that splits nothing: ranks and workers split by batch instead."""
    yield from urls


def buffer_shuffle(samples, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream with a buffer of ``size``; the output depends only on the input and ``rng``."""
    buf: list = []
    draws = np.empty(0, dtype=np.int64)
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        if not len(draws):  # drawing in blocks is ~50x faster than one rng call per sample
            draws = rng.integers(0, size, 4096)
        j, draws = int(draws[0]), draws[1:]
        yield buf[j]
        buf[j] = sample
    for j in rng.permutation(len(buf)):
        yield buf[j]


class ShardDataset(IterableDataset):
    """Yields this rank's collated slice of each global batch of one epoch (use ``batch_size=None``)."""

    def __init__(
        self,
        shards: Sequence[tuple[str | Path, int]],
        *,
        global_batch: int,
        max_len: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        shuffle_buffer: int = 2_000,
        tail: str = "drop",
        next_item: bool = False,
        name: str = "shards",
    ) -> None:
        if not shards:
            raise ValueError(f"{name}: no shards")
        if global_batch % world:
            raise ValueError(f"{name}: global batch {global_batch} is not divisible by world size {world}")
        if not 0 <= rank < world:
            raise ValueError(f"{name}: rank {rank} outside [0, {world})")
        if tail not in TAILS:
            raise ValueError(f"{name}: tail must be one of {TAILS}, got {tail!r}")
        self.shards = [(str(p), int(n)) for p, n in shards]
        self.global_batch, self.max_len, self.seed = global_batch, max_len, seed
        self.rank, self.world, self.local_batch = rank, world, global_batch // world
        self.shuffle, self.shuffle_buffer, self.tail = shuffle, shuffle_buffer, tail
        self.next_item, self.name = next_item, name
        self.epoch, self.start_step = 0, 0

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards)

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch)
        return full + (1 if rest and self.tail == "pad" else 0)

    def set_position(self, epoch: int, samples_consumed: int) -> None:
        if samples_consumed % self.global_batch:
            raise ValueError(
                f"{self.name}: {samples_consumed} samples consumed is not a multiple of the global batch "
                f"{self.global_batch}; resume with the global batch the run was saved with"
            )
        self.epoch, self.start_step = epoch, samples_consumed // self.global_batch

    def shard_order(self, epoch: int) -> list[str]:
        urls = [p for p, _ in self.shards]
        if not self.shuffle:
            return urls
        return [urls[i] for i in np.random.default_rng([self.seed, epoch, 0]).permutation(len(urls))]

    def samples(self, epoch: int) -> Iterator[Sample]:
        """The epoch's decoded sample stream, identical on every rank and worker."""
        stream = wds.WebDataset(
            self.shard_order(epoch), shardshuffle=False, nodesplitter=_every_shard,
            workersplitter=_every_shard, empty_check=False,
        )
        decoded = (schema.decode_case(s) for s in stream)
        if not self.shuffle:
            return decoded
        return buffer_shuffle(decoded, self.shuffle_buffer, np.random.default_rng([self.seed, epoch, 1]))

    def global_batches(self, epoch: int) -> Iterator[list[Sample]]:
        """Exactly :meth:`steps_per_epoch` global batches (lists of G samples), then a count check."""
        steps, batch, head, seen, done = self.steps_per_epoch(), [], [], 0, 0
        for sample in self.samples(epoch):
            seen += 1
            if len(head) < self.global_batch:
                head.append(sample)
            batch.append(sample)
            if len(batch) == self.global_batch:
                if done < steps:  # a stream longer than the manifest says fails below, not here
                    yield batch
                    done += 1
                batch = []
        if seen != self.num_samples:
            raise ValueError(
                f"{self.name}: the manifest lists {self.num_samples} samples in {len(self.shards)} shards, "
                f"the shards hold {seen}"
            )
        if batch and steps * self.global_batch > seen:  # tail == "pad"
            yield batch + [head[i % len(head)] for i in range(self.global_batch - len(batch))]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        lo = self.rank * self.local_batch
        total = self.num_samples
        for step, batch in enumerate(self.global_batches(self.epoch)):
            if step < self.start_step or (step - self.start_step) % workers != worker:
                continue
            out = collate_cases(batch[lo:lo + self.local_batch], self.max_len, next_item=self.next_item)
            positions = torch.arange(step * self.global_batch + lo, step * self.global_batch + lo + self.local_batch)
            out["valid"] = positions < total
            yield out


class ShardLoader:
    """Iterates a :class:`ShardDataset` epoch by epoch and remembers where it is (resumable).

    ``state_dict()`` is taken in the training process, so it counts the batches handed to the
    trainer, not those prefetched by workers.
    """

    def __init__(self, dataset: ShardDataset, num_workers: int = 0) -> None:
        self.dataset, self.num_workers = dataset, num_workers
        self.epoch, self.samples_consumed = 0, 0

    def __len__(self) -> int:
        return self.dataset.steps_per_epoch()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; the next call starts the next epoch."""
        self.dataset.set_position(self.epoch, self.samples_consumed)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers)
        for batch in loader:
            self.samples_consumed += self.dataset.global_batch
            yield batch
        self.epoch, self.samples_consumed = self.epoch + 1, 0

    def seek(self, epoch: int, samples_consumed: int = 0) -> None:
        """Continue from sample ``samples_consumed`` of ``epoch`` on the next iteration."""
        self.dataset.set_position(epoch, samples_consumed)
        self.epoch, self.samples_consumed = epoch, samples_consumed

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "samples_consumed": self.samples_consumed,
            "seed": self.dataset.seed,
            "global_batch": self.dataset.global_batch,
            "num_samples": self.dataset.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        ds = self.dataset
        for key, mine in (("seed", ds.seed), ("global_batch", ds.global_batch), ("num_samples", ds.num_samples)):
            if state.get(key) != mine:
                raise ValueError(f"{ds.name}: cannot resume: saved {key}={state.get(key)!r}, this loader has {mine!r}")
        self.epoch, self.samples_consumed = int(state["epoch"]), int(state["samples_consumed"])


def shard_loader(prepared, split: str, kind: str, *, num_workers: int = 0, **kwargs) -> ShardLoader:
    """Loader over one (split, kind) set of a :class:`dpr_dist.data.prepared.Prepared`.

    Warm-up sets get next-item labels automatically.
    """
    shards = prepared.shards(split, kind)
    kwargs.setdefault("next_item", kind == schema.STAGE_WARMUP)
    return ShardLoader(ShardDataset(shards, name=f"{prepared.root}/{split}/{kind}", **kwargs), num_workers)
