"""Shared fixtures: where the real data lives, and a small prepared data set made by the pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path:
    return Path(os.environ.get("DPR_SHARED_DATA", REPO.parent / "shared" / "datasets"))


def require_dataset(name: str) -> Path:
    """The folder of a real data set under ../shared/datasets, or skip the test saying why."""
    path = shared_datasets() / name
    if not path.exists():
        pytest.skip(f"real data set {name!r} not found at {path} (set DPR_SHARED_DATA to its parent)")
    return path


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A tiny synthetic data set prepared by the real Ray job (hash encoder: no model weights)."""
    from data_pipeline import prepare

    out = tmp_path_factory.mktemp("prepared") / "tiny"
    rc = prepare.main([
        "--config", str(REPO / "configs" / "data" / "tiny-synthetic.yaml"),
        "--set", f"output_dir={out}",
        "--cache-dir", str(out.parent / "cache"),
    ])
    assert rc == 0
    return out
