"""The evaluation report: report.json (machine-readable) and report.md (tables), both atomic.

``results`` is nested ``task -> subset -> method -> metric -> value``. Subsets: ``all``; for
prompted tasks also ``seen`` / ``held_out`` (training vs held-out phrasings), ``shift`` (positive and
combined: the tag is absent from the recent window), ``tag:<name>`` (per steered tag) and, for the
single-clause positive and negative tasks, ``phrasing:<template>`` (per phrasing template: which
wording steers, which does not). A value is a float, or ``{"mean", "std", "n"}`` after
:func:`aggregate_seeds`.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from dpr_dist.common.atomic import sha256_file, write_bytes_atomic, write_json_atomic
from dpr_dist.common.schema import TASK_NEGATIVE, TASK_POSITIVE, TASK_STANDARD
from dpr_dist.eval.metrics import mean_metrics

METRIC_ORDER = ("recall", "ndcg", "violation")


def steered_tag(task: str, cases: Mapping[str, np.ndarray]) -> np.ndarray:
    """The tag a case is steered on: the suppressed one for negative cases, else the positive one."""
    return np.asarray(cases["neg_tag" if task == TASK_NEGATIVE else "pos_tag"])


SINGLE_CLAUSE_PROMPT = {TASK_POSITIVE: "pos_prompt", TASK_NEGATIVE: "neg_prompt"}


def subset_masks(
    task: str, cases: Mapping[str, np.ndarray], tag_names: Sequence[str], templates: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Bool masks over the cases of one task (``cases`` holds per-case ``held_out``, ``shift``, tags,
    prompt ids); ``templates[prompt_id]`` names each prompt's phrasing template."""
    n = len(next(iter(cases.values())))
    masks = {"all": np.ones(n, dtype=bool)}
    if task == TASK_STANDARD:
        return masks
    held_out = np.asarray(cases["held_out"]) == 1
    masks["seen"], masks["held_out"] = ~held_out, held_out
    if task != TASK_NEGATIVE:
        masks["shift"] = np.asarray(cases["shift"]) == 1
    tags = steered_tag(task, cases)
    for tag_id, name in enumerate(tag_names):
        if (tags == tag_id).any():
            masks[f"tag:{name}"] = tags == tag_id
    if templates is not None and task in SINGLE_CLAUSE_PROMPT:
        of_case = np.asarray(templates, dtype=object)[np.asarray(cases[SINGLE_CLAUSE_PROMPT[task]])]
        for template in dict.fromkeys(templates):  # in prompt-table order: per polarity, training then held-out
            if (of_case == template).any():
                masks[f"phrasing:{template}"] = of_case == template
    return masks


def summarise_task(
    task: str,
    per_case_by_method: Mapping[str, Mapping[str, np.ndarray]],
    cases: Mapping[str, np.ndarray],
    tag_names: Sequence[str],
    templates: Sequence[str] | None = None,
) -> tuple[dict, dict[str, int]]:
    """``(subset -> method -> metric -> mean, subset -> number of cases)`` for one task."""
    masks = subset_masks(task, cases, tag_names, templates)
    table = {
        subset: {method: mean_metrics(per_case, mask) for method, per_case in per_case_by_method.items()}
        for subset, mask in masks.items()
    }
    return table, {subset: int(mask.sum()) for subset, mask in masks.items()}


def aggregate_seeds(runs: Sequence[dict]) -> dict:
    """Combine per-seed ``results`` of identical structure into ``{"mean", "std", "n"}`` leaves.

    ``std`` is the sample standard deviation (ddof=1; 0.0 for a single run).
    """
    first = runs[0]
    if isinstance(first, Mapping):
        return {key: aggregate_seeds([run[key] for run in runs]) for key in first}
    values = np.array(runs, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n": len(values)}


def code_version(repo_dir: str | Path) -> dict:
    """``{"commit": git HEAD or None, "dirty": bool or None}`` (None when git or a commit is missing)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def build_report(
    results: dict,
    *,
    config: dict,
    seed: int | list[int],
    manifest_path: str | Path,
    repo_dir: str | Path | None = None,
    subset_sizes: dict | None = None,
) -> dict:
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    return {
        "results": results,
        "subset_sizes": subset_sizes or {},
        "config": config,
        "seed": seed,
        "data": {"manifest": str(manifest_path), "manifest_sha256": sha256_file(manifest_path)},
        "code_version": code_version(repo_dir),
    }


def _json_safe(obj):
    """NaN (e.g. violation with no suppressed tag) is not valid JSON: write null instead."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _metric_key(name: str) -> tuple:
    family, _, k = name.partition("@")
    rank = METRIC_ORDER.index(family) if family in METRIC_ORDER else len(METRIC_ORDER)
    return (rank, family, int(k) if k.isdigit() else 0)


def _cell(value) -> str:
    if isinstance(value, Mapping):
        if value.get("mean") is None:
            return "–"
        return f"{value['mean']:.4f} ± {value['std']:.4f}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}"


# Subsets of many small slices (one per tag, one per phrasing template): folded away in report.md
# (`<details>`), so the headline tables stay readable; report.json holds them all the same.
FOLDED_SUBSETS = {"tag:": "per tag", "phrasing:": "per phrasing template"}


def _subset_table(task: str, subset: str, methods: Mapping, n: int | None) -> list[str]:
    columns = sorted({m for row in methods.values() for m in row}, key=_metric_key)
    lines = ["", f"## {task} / {subset}" + (f" ({n} cases)" if n is not None else ""), ""]
    lines.append("| method | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for method, row in methods.items():
        lines.append(f"| {method} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines


def render_markdown(report: dict) -> str:
    """One table per task and subset: rows = methods, columns = metrics; per-tag and per-phrasing
    subsets folded into one ``<details>`` block per task and kind."""
    code = report["code_version"]
    lines = [
        "# Evaluation report",
        "",
        f"- data manifest sha256: `{report['data']['manifest_sha256']}`",
        f"- code: `{code['commit'] or 'unknown'}`" + (" (uncommitted changes)" if code["dirty"] else ""),
        f"- seed: {report['seed']}",
    ]
    if "split" in report:
        lines.append(f"- split: {report['split']}")
    ckpt = report.get("checkpoint")
    if ckpt:
        lines.append(f"- checkpoint: `{ckpt['path']}` ({ckpt['stage']}, epoch {ckpt['best_epoch']} kept on "
                     f"{ckpt['selected_on']})")
        if ckpt.get("in_progress"):
            lines.append(f"- **stage still training** when evaluated: the best of its first "
                         f"{ckpt.get('epochs_run')} epochs, not its final checkpoint")
    sizes = report.get("subset_sizes", {})
    for task, subsets in report["results"].items():
        folded: dict[str, list[str]] = {prefix: [] for prefix in FOLDED_SUBSETS}
        for subset, methods in subsets.items():
            table = _subset_table(task, subset, methods, sizes.get(task, {}).get(subset))
            prefix = next((p for p in FOLDED_SUBSETS if subset.startswith(p)), None)
            (folded[prefix] if prefix else lines).extend(table)
        for prefix, tables in folded.items():
            if tables:
                count = sum(subset.startswith(prefix) for subset in subsets)
                lines += ["", f"<details><summary>{task}: {FOLDED_SUBSETS[prefix]} ({count} table{'s' * (count != 1)})</summary>",
                          *tables, "", "</details>"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    out = Path(out_dir)
    json_path, md_path = out / "report.json", out / "report.md"
    write_json_atomic(json_path, _json_safe(report))
    write_bytes_atomic(md_path, render_markdown(report).encode())
    return json_path, md_path
