"""The COMPLETE marker shared by every directory of saved state (checkpoints, training state, table
shards): written last, it lists the sha256 of the other files, so an interrupted save (no marker)
and an altered file (checksum differs) are refused by name instead of loaded."""

from __future__ import annotations

from pathlib import Path

from dpr_dist.common.atomic import sha256_file, write_json_atomic
from dpr_dist.common.jsonfile import read_json

COMPLETE = "COMPLETE"


def write_complete(directory: Path, files: list[Path]) -> None:
    """Record the checksums of ``files`` (paths under ``directory``) in the marker, atomically."""
    write_json_atomic(directory / COMPLETE, {str(p.relative_to(directory)): sha256_file(p) for p in files})


def verify_complete(directory: Path, what: str, error: type[Exception], check_sums: bool = True) -> dict[str, str]:
    """Raise ``error`` naming the directory or file when ``directory`` is not a complete ``what``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise error(f"{what} directory not found: {directory}")
    marker = directory / COMPLETE
    if not marker.exists():
        raise error(f"{directory}: partial {what} ({COMPLETE} missing): was the save interrupted?")
    sums = read_json(marker, error)
    if not isinstance(sums, dict):
        raise error(f"{marker}: corrupt (not a mapping of file names to checksums)")
    for name, expected in sums.items():
        path = directory / name
        if not path.exists():
            raise error(f"{path}: missing from the {what}")
        if check_sums and sha256_file(path) != expected:
            raise error(f"{path}: sha256 differs from {COMPLETE}: the file is corrupt or was altered")
    return sums
