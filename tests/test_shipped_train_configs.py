"""Every shipped config loads and says in its header the command that runs it; training configs can
also run on the sharded path, data configs' phrasings pass the held-out rule."""

from __future__ import annotations

import pytest

from conftest import REPO
from data_pipeline.config import DataConfig
from data_pipeline.templates import check_phrasings
from dpr_dist.common.configio import load_yaml
from dpr_dist.training.config import TrainConfig

CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))
DATA_CONFIGS = sorted((REPO / "configs" / "data").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "ml-100k.yaml", "ml-100k-ci.yaml", "ml-1m.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_loads_and_can_shard(path):
    cfg = load_yaml(TrainConfig, path)
    # TorchRec's table kernels need a dim divisible by 4 (ShardedItemTable refuses others).
    assert cfg.model.hidden % 4 == 0, f"{path.name}: model.hidden={cfg.model.hidden}"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"configs/train/{path.name}" in line for line in header), f"{path.name}: no command in the header"


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=[p.stem for p in DATA_CONFIGS])
def test_shipped_data_config_loads_with_valid_phrasings(path):
    cfg = load_yaml(DataConfig, path)
    check_phrasings(cfg.phrasings)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"configs/data/{path.name}" in line for line in header), f"{path.name}: no command in the header"
