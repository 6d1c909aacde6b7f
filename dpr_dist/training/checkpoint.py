"""Stage checkpoints: a directory with the weights (safetensors: no pickle), the config and metrics.

    <dir>/model.safetensors   every tensor of the model's state_dict
    <dir>/config.yaml         the full TrainConfig that produced it (a run can be reproduced from it)
    <dir>/metrics.json        stage, best epoch, validation metrics, data manifest sha256, code version
    <dir>/COMPLETE            written last: a directory without it is a partial checkpoint

Each file is written atomically; a checkpoint is complete only once ``COMPLETE`` exists, and
``COMPLETE`` lists the sha256 of the other files so a corrupted file is detected and named on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpr_dist.common.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from dpr_dist.common.complete import COMPLETE, verify_complete, write_complete

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
METRICS = "metrics.json"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(directory: str | Path, state: dict[str, torch.Tensor], config: dict, metrics: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / COMPLETE).unlink(missing_ok=True)  # the old checkpoint stops counting as complete
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    return complete_checkpoint(directory, config, metrics)


def finalise_checkpoint(directory: str | Path, weights: str | Path, config: dict, metrics: dict) -> Path:
    """Make a checkpoint of weights already written (a safetensors file, moved into place)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / COMPLETE).unlink(missing_ok=True)
    Path(weights).replace(directory / WEIGHTS)
    return complete_checkpoint(directory, config, metrics)


def complete_checkpoint(directory: str | Path, config: dict, metrics: dict) -> Path:
    """Make a checkpoint of ``directory``, whose weights file is in place: config, metrics, COMPLETE."""
    directory = Path(directory)
    write_bytes_atomic(directory / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())
    write_json_atomic(directory / METRICS, metrics)
    write_complete(directory, [directory / name for name in (WEIGHTS, CONFIG, METRICS)])
    return directory


def load_checkpoint(directory: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Return (state_dict, config, metrics); refuse a partial or altered checkpoint, naming the file."""
    directory = Path(directory)
    verify_complete(directory, "checkpoint", CheckpointError, check_sums=verify)
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS}: cannot be read: {exc}") from None
    config = yaml.safe_load((directory / CONFIG).read_text())
    metrics = json.loads((directory / METRICS).read_text())
    return state, config, metrics
