"""Checkpoint of a ShardedItemTable (weights + fused-optimizer state) with torch.distributed.checkpoint,
(the consolidated export for evaluation and serving is dpr_dist.distributed.export).

    <dir>/.metadata, <dir>/__*_*.distcp   written by DCP, one data file per rank
    <dir>/COMPLETE                        written last by rank 0: sha256 of every other file

DCP stores global offsets, so a checkpoint written by N ranks loads on M ranks and under another
sharding type. A rank holding no shard (table-wise) has an empty optimizer state: loading therefore
uses ``DefaultLoadPlanner(allow_partial_load=True)``; because that planner would also skip keys the
checkpoint lacks, the expected keys are checked against the metadata first.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from dpr_dist.common.complete import COMPLETE, verify_complete, write_complete
from dpr_dist.distributed.env import barrier_or_fail
from dpr_dist.distributed.sharded_table import ShardedItemTable



class TableCheckpointError(RuntimeError):
    pass


def save_table(table: ShardedItemTable, directory: str | Path) -> Path:
    """Collective. Overwrites ``directory``'s checkpoint; COMPLETE appears only once every rank wrote."""
    directory = Path(directory)
    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / COMPLETE).unlink(missing_ok=True)  # a crash from here on leaves a refused checkpoint
    barrier_or_fail(f"before saving table checkpoint {directory}")
    dcp.save(table.state_for_checkpoint(), checkpoint_id=str(directory))
    barrier_or_fail(f"after saving table checkpoint {directory}")
    if dist.get_rank() == 0:
        write_complete(directory, [p for p in sorted(directory.iterdir()) if p.is_file() and p.name != COMPLETE])
    barrier_or_fail(f"after marking table checkpoint {directory} complete")
    return directory


def verify_table_checkpoint(directory: str | Path) -> None:
    """Refuse a partial or altered checkpoint, naming the file (no collective)."""
    verify_complete(directory, "table checkpoint", TableCheckpointError)


def load_table(table: ShardedItemTable, directory: str | Path, verify: bool = True) -> None:
    """Collective. Loads weights and fused-optimizer state in place, resharding as needed."""
    directory = Path(directory)
    if verify:
        verify_table_checkpoint(directory)
    state = table.state_for_checkpoint()
    _require_keys(state["weights"], "weights", directory)
    dcp.load(state, checkpoint_id=str(directory), planner=DefaultLoadPlanner(allow_partial_load=True))
    table.collection.fused_optimizer.load_state_dict(state["optimizer"])


def _require_keys(weights: dict, prefix: str, directory: Path) -> None:
    saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
    missing = sorted(f"{prefix}.{k}" for k in weights if f"{prefix}.{k}" not in saved)
    if missing:
        raise TableCheckpointError(f"{directory}: checkpoint lacks {missing}: not an item-table checkpoint?")
