"""Full-ranking, leave-one-out evaluation of a DPR checkpoint and its baselines on the same cases.

Every method scores the whole catalogue for every case; history items and the padding column are
excluded (the target stays rankable even when it was consumed before). Per-case metrics are kept so
the report can cut any subset: held-out vs seen phrasings, the intent-shift subset, per tag.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from dpr_dist.common import schema
from dpr_dist.data.batching import left_pad
from dpr_dist.data.clauses import clause_inputs
from dpr_dist.data.reader import ShardDataset
from dpr_dist.eval import baselines, metrics

# Methods evaluated per task. "dpr" uses the routing the model was trained with; "dpr_hard" routes by
# the case's polarity label; "+filter" applies the hard filter on top. DPR_SPEC asks for DPR + filter
# on negative prompts; on positive ones (ours) it tells whether DPR orders the requested tag's items
# better than the backbone does, apart from how much mass it moves onto them.
TASK_METHODS = {
    schema.TASK_STANDARD: ["popularity", "backbone", "dpr"],
    schema.TASK_POSITIVE: ["popularity+filter", "backbone", "hard_filter", "rerank@50", "rerank@200", "dpr", "dpr_hard",
                           "dpr+filter"],
    schema.TASK_NEGATIVE: ["popularity+filter", "backbone", "hard_filter", "rerank@50", "rerank@200", "dpr", "dpr_hard", "dpr+filter"],
    schema.TASK_COMBINED: ["popularity+filter", "backbone", "hard_filter", "rerank@50", "rerank@200", "dpr", "dpr_hard", "dpr+filter"],
}


@dataclass
class TaskResult:
    fields: dict[str, np.ndarray]                       # case fields, [n] each
    per_case: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # method -> metric -> [n]


@dataclass
class EvalInputs:
    """What scoring needs beyond the model (all loaded once per evaluation)."""

    prompt_emb: torch.Tensor        # [P, D]
    item_tag: torch.Tensor          # bool [N+1, T]
    popularity: np.ndarray          # int64 [N+1], training positions only
    item_text_emb: torch.Tensor | None = None   # [N+1, D] for the text rerank
    tag_text_emb: torch.Tensor | None = None    # [T, D]
    rerank_weights: dict[str, float] = field(default_factory=dict)  # "rerank@50" -> w (tuned on valid)


def _with_routing(model, mode: str):
    """Context manager: evaluate with another routing mode on the same weights."""

    class _Switch:
        def __enter__(self):
            self.old = model.cfg.routing
            model.cfg.routing = mode

        def __exit__(self, *exc):
            model.cfg.routing = self.old

    return _Switch()


@torch.no_grad()
def score_batch(model, batch: dict, exclude: torch.Tensor, inputs: EvalInputs, methods: list[str]) -> dict[str, torch.Tensor]:
    """Scores [B, N+1] of every requested method on one batch of cases."""
    out: dict[str, torch.Tensor] = {}
    history = model.encode_history(batch["hist"])
    base = model.item_table.score_all(history.h)
    pos_tag, neg_tag = batch["pos_tag"], batch["neg_tag"]
    clause_emb, polarity = clause_inputs(batch["pos_prompt"], batch["neg_prompt"], inputs.prompt_emb)
    dpr_scores = {}

    def dpr(mode: str | None) -> torch.Tensor:
        key = mode or "trained"
        if key not in dpr_scores:
            if mode is None:
                u = model.steer(history, clause_emb, polarity).u
            else:
                with _with_routing(model, mode):
                    u = model.steer(history, clause_emb, polarity).u
            dpr_scores[key] = model.item_table.score_all(u)
        return dpr_scores[key]

    for method in methods:
        if method == "popularity":
            out[method] = baselines.popularity_scores(inputs.popularity, base.shape[0])
        elif method == "popularity+filter":
            pop = baselines.popularity_scores(inputs.popularity, base.shape[0])
            out[method] = baselines.hard_filter(pop, inputs.item_tag, pos_tag, neg_tag)
        elif method == "backbone":
            out[method] = base
        elif method == "hard_filter":
            out[method] = baselines.hard_filter(base, inputs.item_tag, pos_tag, neg_tag)
        elif method.startswith("rerank@"):
            if inputs.item_text_emb is None:
                continue
            out[method] = baselines.text_rerank(
                base, exclude, inputs.item_text_emb, inputs.tag_text_emb, pos_tag, neg_tag,
                int(method.split("@")[1]), inputs.rerank_weights.get(method, 1.0),
            )
        elif method == "dpr":
            out[method] = dpr(None)
        elif method == "dpr_hard":
            out[method] = dpr("hard")
        elif method == "dpr+filter":
            out[method] = baselines.hard_filter(dpr(None), inputs.item_tag, pos_tag, neg_tag)
        else:
            raise ValueError(f"unknown evaluation method {method!r}")
    return out


def read_cases(prepared, split: str, task: str, max_cases: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every case of one (split, task) in manifest order (the first ``max_cases`` if given)."""
    shards = prepared.shards(split, task)
    if not shards:
        return []
    stream = ShardDataset(shards, global_batch=1, max_len=1, shuffle=False, name=f"{prepared.root}/{split}/{task}").samples(0)
    return list(itertools.islice(stream, max_cases))


def case_batches(cases: list[tuple[np.ndarray, np.ndarray]], batch_size: int, max_len: int, num_columns: int):
    """Model batches of ``cases`` (history, row), each with the mask of items a ranking must skip."""
    for lo in range(0, len(cases), batch_size):
        chunk = cases[lo: lo + batch_size]
        hists = [h for h, _ in chunk]
        table = np.stack([c for _, c in chunk])
        batch = {name: torch.from_numpy(table[:, i].copy()) for name, i in schema.FIELD_INDEX.items()}
        batch["hist"] = left_pad(hists, max_len)
        # Exclusion uses the WHOLE history, not just the max_len items the model reads.
        full = left_pad(hists, max(1, max(len(x) for x in hists)))
        exclude = metrics.exclusion_mask(full, num_columns, targets=batch["target"])
        yield batch, exclude


def evaluate_task(
    model,
    prepared,
    split: str,
    task: str,
    inputs: EvalInputs,
    methods: list[str] | None = None,
    ks=(5, 10, 20, 50),
    batch_size: int = 256,
    max_cases: int | None = None,
) -> TaskResult:
    model.eval()
    methods = methods or TASK_METHODS[task]
    cases = read_cases(prepared, split, task, max_cases)
    if not cases:
        return TaskResult(fields={name: np.zeros(0, np.int64) for name in schema.CASE_FIELDS})
    table = np.stack([c for _, c in cases])
    result = TaskResult(fields={name: table[:, i] for name, i in schema.FIELD_INDEX.items()})
    parts: dict[str, list] = {m: [] for m in methods}
    suppressed = task in (schema.TASK_NEGATIVE, schema.TASK_COMBINED)
    for batch, exclude in case_batches(cases, batch_size, model.cfg.max_len, prepared.num_items + 1):
        for method, scores in score_batch(model, batch, exclude, inputs, methods).items():
            parts[method].append(metrics.case_metrics(
                scores, batch["target"], exclude, ks=ks,
                item_tag=inputs.item_tag if suppressed else None,
                suppressed_tags=batch["neg_tag"] if suppressed else None,
            ))
    result.per_case = {m: metrics.concat_case_metrics(p) for m, p in parts.items() if p}
    return result
