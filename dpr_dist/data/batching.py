"""Turning decoded samples into model batches: left-padded histories and per-field LongTensors.

Histories are LEFT-padded to a fixed ``max_len`` so the most recent item is always in the last
column (the backbone reads the user state there) and every batch has the same shape.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dpr_dist.common import schema

Sample = tuple[np.ndarray, np.ndarray]  # (history int32 [n], case int64 [len(CASE_FIELDS)])


def left_pad(seqs: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """``[B, max_len]`` LongTensor: the last ``max_len`` items of each sequence, 0-padded on the left."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = seq[len(seq) - max_len:] if len(seq) > max_len else seq
        if len(tail):
            out[row, max_len - len(tail):] = tail
    return torch.from_numpy(out)


def collate_cases(samples: Sequence[Sample], max_len: int, next_item: bool = False) -> dict[str, torch.Tensor]:
    """Batch of cases: ``hist [B, L]`` plus one ``[B]`` LongTensor per case field.

    ``next_item=True`` (warm-up samples, whose history is a whole training sequence): ``hist`` is
    the sequence without its last item and ``labels [B, L]`` the sequence shifted by one, aligned
    position by position, both left-padded; label 0 means "no loss here".
    """
    hists = [h for h, _ in samples]
    cases = np.stack([c for _, c in samples]) if samples else np.zeros((0, len(schema.CASE_FIELDS)), np.int64)
    batch = {name: torch.from_numpy(cases[:, i].copy()) for name, i in schema.FIELD_INDEX.items()}
    if next_item:
        batch["hist"] = left_pad([h[:-1] for h in hists], max_len)
        batch["labels"] = left_pad([h[1:] for h in hists], max_len)
    else:
        batch["hist"] = left_pad(hists, max_len)
    return batch
