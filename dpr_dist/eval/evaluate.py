"""Evaluate any stage checkpoint on every task against every baseline, and summarise by subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dpr_dist.common import schema
from dpr_dist.data.prepared import Prepared
from dpr_dist.eval import baselines, metrics
from dpr_dist.eval.report import summarise_task
from dpr_dist.eval.harness import TASK_METHODS, EvalInputs, case_batches, evaluate_task, read_cases

RERANK_TASKS = (schema.TASK_POSITIVE, schema.TASK_NEGATIVE, schema.TASK_COMBINED)


def load_text_embeddings(prepared: Prepared) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Item-text and tag-text embeddings written by the pipeline (for the text rerank baseline)."""
    item_path = Path(prepared.root) / schema.ITEM_TEXT_EMB_NAME
    tag_path = Path(prepared.root) / schema.TAG_TEXT_EMB_NAME
    if not (item_path.exists() and tag_path.exists()):
        return None, None
    return (torch.from_numpy(np.load(item_path, allow_pickle=False)),
            torch.from_numpy(np.load(tag_path, allow_pickle=False)))


@torch.no_grad()
def tune_rerank(model, prepared: Prepared, inputs: EvalInputs, task: str, depths, grid=None, max_cases=None) -> dict:
    """Rerank weight per depth, chosen on the VALIDATION cases of ``task`` (never on test)."""
    cases = read_cases(prepared, "valid", task, max_cases)
    if not cases or inputs.item_text_emb is None:
        return {}
    base, excl, targets, pos, neg = [], [], [], [], []
    for batch, exclude in case_batches(cases, 512, model.cfg.max_len, prepared.num_items + 1):
        h = model.encode_history(batch["hist"]).h
        base.append(model.item_table.score_all(h))
        excl.append(exclude)
        targets.append(batch["target"])
        pos.append(batch["pos_tag"])
        neg.append(batch["neg_tag"])
    cat = torch.cat
    chosen = {}
    for depth in depths:
        w, curve = baselines.tune_rerank_weight(
            cat(base), cat(excl), cat(targets), inputs.item_text_emb, inputs.tag_text_emb,
            cat(pos), cat(neg), depth, **({"grid": grid} if grid else {}),
        )
        chosen[f"rerank@{depth}"] = {"weight": w, "valid_ndcg@10": curve}
    return chosen


def evaluate_checkpoint(
    model,
    prepared: Prepared,
    popularity_counts: np.ndarray,
    split: str = "test",
    tasks=schema.EVAL_TASKS,
    ks=(5, 10, 20, 50),
    rerank_depths=(50, 200),
    rerank_grid=None,
    max_cases: int | None = None,
    batch_size: int = 256,
) -> tuple[dict, dict, dict]:
    """(results task -> subset -> method -> metric -> mean, subset sizes, tuned rerank weights)."""
    item_text, tag_text = load_text_embeddings(prepared)
    inputs = EvalInputs(
        prompt_emb=prepared.prompt_embeddings, item_tag=prepared.item_tag,
        popularity=popularity_counts, item_text_emb=item_text, tag_text_emb=tag_text,
    )
    results, sizes, reranks = {}, {}, {}
    templates = prepared.prompts["template"].tolist()  # row i is prompt id i (load_prepared checks)
    for task in tasks:
        rerank = tune_rerank(model, prepared, inputs, task, rerank_depths, rerank_grid, max_cases) if task in RERANK_TASKS else {}
        inputs.rerank_weights = {m: r["weight"] for m, r in rerank.items()}
        methods = [m for m in TASK_METHODS[task] if not m.startswith("rerank@") or m in inputs.rerank_weights]
        res = evaluate_task(model, prepared, split, task, inputs, methods, ks, batch_size, max_cases)
        results[task], sizes[task] = summarise_task(task, res.per_case, res.fields, prepared.tag_names, templates)
        reranks[task] = rerank
    return results, sizes, reranks

