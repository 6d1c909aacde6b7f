"""Every shipped config loads and says in its header the command that runs it; training configs can
also run on the sharded path and expect the prompt width of the data set they read, data configs'
phrasings pass the held-out rule."""

from __future__ import annotations

import pytest

from conftest import REPO
from data_pipeline.config import DataConfig
from data_pipeline.encode import encoder_info
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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_expects_the_prompt_width_of_its_data(path):
    """A train config names its data set by the data config's output_dir; its model.prompt_dim must be
    that data set's encoder width, or training stops at once (run_stages checks the prepared table)."""
    cfg = load_yaml(TrainConfig, path)
    writers = [load_yaml(DataConfig, p) for p in DATA_CONFIGS]
    writers = [d for d in writers if d.output_dir == cfg.data_dir]
    assert len(writers) == 1, f"{path.name}: data_dir {cfg.data_dir} is written by {len(writers)} shipped data configs"
    assert cfg.model.prompt_dim == encoder_info(writers[0].encoder)["dim"], (
        f"{path.name}: model.prompt_dim={cfg.model.prompt_dim}, data {cfg.data_dir} ({writers[0].encoder.kind}) "
        f"is {encoder_info(writers[0].encoder)['dim']}-d")
