"""Resumable training state of a stage: written every N steps and at every epoch end, so a run
killed at any point (kill -9 included) resumes from its last state with the same result.

    <stage dir>/resume/
        LATEST                 name of the newest complete state; replaced atomically, last
        step-00000120/
            trainer.json       loop position: epoch, samples consumed, best metric, early-stopping
                               counters, history so far, and the fingerprint of the run's config
            rng-r<rank>.pt     that rank's torch RNG state and the shared sampling generator's state
            ...                the runtime's model and optimiser state (runtime.py, distributed/runtime.py)
            COMPLETE           sha256 of every other file, written last (by rank 0)

A state without COMPLETE, or whose files differ from it, is refused by name: resuming from a
half-written or altered state would silently continue a different run. Only tensors are ever
unpickled (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dpr_dist.common.atomic import write_bytes_atomic
from dpr_dist.common.complete import COMPLETE, verify_complete, write_complete

RESUME_DIR = "resume"
LATEST = "LATEST"
TRAINER = "trainer.json"


class ResumeError(RuntimeError):
    """A training state that cannot be resumed from (partial, altered, or from another run)."""


def state_name(global_step: int) -> str:
    return f"step-{global_step:08d}"


def rng_path(directory: Path, rank: int) -> Path:
    return directory / f"rng-r{rank}.pt"


def save_rng(directory: Path, rank: int, generator: torch.Generator) -> None:
    path = rng_path(directory, rank)
    tmp = path.with_name(path.name + ".tmp")
    state = {"torch": torch.get_rng_state(), "sampling": generator.get_state()}
    if torch.cuda.is_available():  # dropout on GPU draws from the device's generator
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, tmp)
    tmp.replace(path)


def load_rng(directory: Path, rank: int, generator: torch.Generator) -> None:
    """This rank's RNG; a rank the saved run did not have (resuming on more ranks) takes rank 0's
    torch state: dropout masks then differ from a run on the new world size, as they always do."""
    path = rng_path(directory, rank)
    if not path.exists():
        path = rng_path(directory, 0)
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampling"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def mark_complete(directory: Path, root: Path) -> None:
    """Rank 0, after every rank wrote: checksum the state, then point LATEST at it, then drop
    older states (a crash in between leaves LATEST on a complete state)."""
    write_complete(directory, [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != COMPLETE])
    write_bytes_atomic(root / LATEST, directory.name.encode())
    for old in root.iterdir():
        if old.is_dir() and old.name != directory.name:
            shutil.rmtree(old, ignore_errors=True)


def verify(directory: Path) -> None:
    verify_complete(directory, "training state", ResumeError)


def latest(root: Path, fingerprint: str) -> tuple[Path, dict] | None:
    """(state directory, trainer.json) of the newest state of this run, verified; None when there
    is none, or it belongs to another configuration (which is then not resumed)."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    directory = root / pointer.read_text().strip()
    verify(directory)
    trainer = json.loads((directory / TRAINER).read_text())
    if trainer.get("fingerprint") != fingerprint:
        return None
    return directory, trainer
