"""PNG figures for the report (matplotlib Agg backend: no display needed), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from dpr_dist.common.atomic import atomic_path  # noqa: E402

# No "Software" / date entries: the same data then gives the same PNG bytes.
_PNG_METADATA = {"Software": None}


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata=_PNG_METADATA)
    plt.close(fig)
    return Path(path)


def plot_training_curves(history: Sequence[Mapping], path: str | Path) -> Path:
    """One panel per stage (in order of appearance), one line per numeric metric against epoch.

    ``history`` rows look like ``{"stage": "warmup", "epoch": 3, "loss": 1.2, "valid_ndcg@10": .1}``.
    """
    stages = list(dict.fromkeys(row["stage"] for row in history))
    if not stages:
        raise ValueError("plot_training_curves: empty history")
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [row for row in history if row["stage"] == stage]
        names = sorted({k for row in rows for k in row if k not in ("stage", "epoch")})
        for name in names:
            points = [(row["epoch"], row[name]) for row in rows if name in row]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_title(stage)
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def steering_gains(
    results: Mapping, task: str, method: str, baseline: str, metric: str = "ndcg@10"
) -> dict[str, float]:
    """Relative gain in % of ``method`` over ``baseline`` per ``tag:<name>`` subset of ``task``.

    Tags where the baseline scores 0 have no relative gain and are left out.
    """
    gains = {}
    for subset, methods in results[task].items():
        if not subset.startswith("tag:"):
            continue
        ours, base = _value(methods[method][metric]), _value(methods[baseline][metric])
        if base:
            gains[subset[4:]] = 100.0 * (ours / base - 1.0)
    return gains


def _value(v) -> float:
    return v["mean"] if isinstance(v, Mapping) else v


def plot_steering_gains(
    results: Mapping, path: str | Path, task: str, method: str, baseline: str, metric: str = "ndcg@10"
) -> Path:
    """Bar chart of :func:`steering_gains`, one bar per tag."""
    gains = steering_gains(results, task, method, baseline, metric)
    if not gains:
        raise ValueError(f"plot_steering_gains: no tag:<name> subsets with a non-zero {baseline} {metric} in {task!r}")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(gains) + 2), 3.5))
    ax.bar(list(gains), list(gains.values()), color=["tab:green" if g >= 0 else "tab:red" for g in gains.values()])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel(f"{metric}: % gain of {method} over {baseline}")
    ax.set_title(task)
    ax.tick_params(axis="x", labelrotation=60)
    fig.tight_layout()
    return _save(fig, path)
