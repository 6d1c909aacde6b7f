"""Validation metrics for early stopping, computed through the ItemTable interface so they run on a
plain table and on a sharded one (whose ranks each validate a share of the cases and rank them
against their shard). Early stopping reads the VALIDATION split only.

The judge of a finished checkpoint is dpr_dist.eval (full score matrices, every baseline); this
module only needs DPR's own NDCG@10 and violation@10 and shares the metric formulas of
dpr_dist.eval.metrics, so both agree on what a rank is worth.
"""

from __future__ import annotations

import numpy as np
import torch

from dpr_dist.common import schema
from dpr_dist.data.batching import left_pad
from dpr_dist.data.clauses import clause_inputs
from dpr_dist.eval import metrics
from dpr_dist.eval.harness import read_cases

K = 10
SUPPRESSION_TASKS = (schema.TASK_NEGATIVE, schema.TASK_COMBINED)


class Validator:
    """NDCG@10 (and violation@10 for suppression tasks) of one method on some tasks of a split.

    ``method``: "backbone" (u = h, the warm-up) or "dpr" (the steered vector). Cases are dealt to
    the ranks round-robin; every rank runs the same number of batches (the last ones padded with
    repeated cases that count for nothing), because each batch is a collective on a sharded table.
    """

    def __init__(self, prepared, split: str, tasks, method: str, runtime, prompt_emb: torch.Tensor,
                 item_tag: torch.Tensor, max_len: int, batch_size: int = 256, max_cases: int | None = None) -> None:
        if method not in ("backbone", "dpr"):
            raise ValueError(f"validation method {method!r}; allowed: backbone, dpr")
        self.method, self.runtime, self.max_len, self.batch_size = method, runtime, max_len, batch_size
        self.prompt_emb, self.item_tag = prompt_emb, item_tag
        self.tasks = {task: read_cases(prepared, split, task, max_cases) for task in tasks}
        longest = [len(h) for cases in self.tasks.values() for h, _ in cases]
        self.history_width = max(longest + [1])  # one width on every rank: the histories are gathered

    def __call__(self, trainer) -> dict[str, float]:
        """{task/ndcg@10, task/violation@10}; the same values on every rank."""
        out = {}
        for task, cases in self.tasks.items():
            totals = self._task_totals(trainer, task, cases)
            totals = self.runtime.all_reduce(totals)
            ndcg, n, violation, n_suppressed = totals.tolist()
            out[f"{task}/ndcg@10"] = ndcg / n if n else 0.0
            if task in SUPPRESSION_TASKS:
                out[f"{task}/violation@10"] = violation / n_suppressed if n_suppressed else float("nan")
        return out

    @torch.no_grad()
    def _task_totals(self, trainer, task: str, cases: list) -> torch.Tensor:
        rank, world = self.runtime.rank, self.runtime.world_size
        mine = cases[rank::world]
        per_rank = -(-len(cases) // world)  # every rank runs ceil(n / world) cases' worth of batches
        padded = mine + cases[:1] * (per_rank - len(mine))
        totals = torch.zeros(4, dtype=torch.float64)
        for lo in range(0, per_rank, self.batch_size):
            chunk = padded[lo : lo + self.batch_size]
            totals += self._batch_totals(trainer, task, chunk, valid=max(0, min(len(mine) - lo, len(chunk))))
        return totals

    def _batch_totals(self, trainer, task: str, chunk: list, valid: int) -> torch.Tensor:
        device = self.runtime.device
        table = np.stack([c for _, c in chunk])
        field = {name: torch.from_numpy(table[:, i].copy()).to(device) for name, i in schema.FIELD_INDEX.items()}
        hists = [h for h, _ in chunk]
        hist = left_pad(hists, self.max_len).to(device)
        history = left_pad(hists, self.history_width).to(device)  # exclusion: the WHOLE history
        clause_emb, polarity = clause_inputs(field["pos_prompt"], field["neg_prompt"], self.prompt_emb)
        table_ = trainer.model.item_table

        def user_vectors(model):
            out = model(hist, clause_emb, polarity)
            return out.h if self.method == "backbone" else out.u

        u = trainer.run(user_vectors)
        ranks = table_.target_ranks(u, field["target"], history)
        gain = metrics.ndcg_at_k(ranks.cpu(), K)[:valid]
        totals = [float(gain.sum()), float(valid), 0.0, 0.0]
        if task in SUPPRESSION_TASKS:
            _, top = table_.topk(u, K, history.masked_fill(history == field["target"].unsqueeze(1), 0))
            neg = field["neg_tag"]
            carries = self.item_tag[top.clamp(min=0), neg.clamp(min=0).unsqueeze(1)] & (top >= 0)
            present = (top >= 0).sum(1).clamp(min=1)
            share = (carries.sum(1) / present).double().cpu()[:valid]
            has = (neg >= 0).cpu()[:valid]
            totals[2], totals[3] = float(share[has].sum()), float(has.sum())
        return torch.tensor(totals, dtype=torch.float64)
