"""Tracking finished work across runs, and timing the steps of one run.

A partition marker (``.partitions/part-NNNN.json``) is written atomically after all of that
partition's shards are in place. It records the run hash (config + source checksums) and every
shard's checksum, so a rerun after a crash skips a partition only when the very same inputs
produced it and its shards are still intact.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dpr_dist.common.atomic import sha256_file, write_json_atomic

MARKER_DIR = ".partitions"
# One written shard: (split, kind, relpath, sample count, sha256).
ShardRow = tuple[str, str, str, int, str]


def marker_path(out_dir: str | Path, part: int) -> Path:
    return Path(out_dir) / MARKER_DIR / f"part-{part:04d}.json"


def write_partition_marker(out_dir: str | Path, part: int, run_hash: str, rows: list[ShardRow]) -> None:
    write_json_atomic(marker_path(out_dir, part), {"part": part, "run_hash": run_hash, "shards": [list(r) for r in rows]})


def finished_partition(out_dir: str | Path, part: int, run_hash: str) -> list[ShardRow] | None:
    """The partition's shard rows if its marker matches ``run_hash`` and every shard checks out."""
    path = marker_path(out_dir, part)
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if marker.get("run_hash") != run_hash or marker.get("part") != part:
        return None
    rows = [tuple(row) for row in marker.get("shards", [])]
    for _split, _kind, relpath, _count, sha in rows:
        shard = Path(out_dir) / relpath
        if not shard.is_file() or sha256_file(shard) != sha:
            return None
    return rows  # type: ignore[return-value]


class StepTimer:
    """Wall time per named step, for the run summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"[prepare] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        total = sum(self.seconds.values())
        lines = [f"  {name:<22} {sec:8.2f} s" for name, sec in self.seconds.items()]
        return "\n".join([*lines, f"  {'total':<22} {total:8.2f} s"])
