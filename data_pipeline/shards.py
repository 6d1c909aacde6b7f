"""Writing cases into webdataset tar shards, reproducibly and crash-safely.

Reproducible: samples are sorted by key and then shuffled with a generator seeded by
(seed, split, kind, part) only, and tar headers carry mtime 0 and fixed owner names, so the same
cases always give byte-identical shards. Crash-safe: each shard is written under a temporary name and
renamed when complete (``dpr_dist.common.atomic``), so a final-named shard is always whole.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import webdataset as wds

from dpr_dist.common.atomic import atomic_path, sha256_file
from dpr_dist.common.schema import encode_case, shard_name

# One case as produced by data_pipeline.cases: (unique key, history, case fields by name).
Sample = tuple[str, Sequence[int] | np.ndarray, Mapping[str, int]]
# What write_shards returns per shard: (path relative to the data set directory, samples, sha256).
ShardRecord = tuple[str, int, str]


def shuffle_seed(seed: int, split: str, kind: str, part: int) -> int:
    """A stable 64-bit seed; sha256 rather than hash(), which is salted per process."""
    digest = hashlib.sha256(f"{seed}|{split}|{kind}|{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _check_keys(samples: list[Sample], split: str, kind: str) -> None:
    seen: set[str] = set()
    for key, _, _ in samples:
        # webdataset splits "<key>.<field>" at the first dot of the member name: a dot or slash
        # inside a key would silently split one sample into several.
        if not key or "." in key or "/" in key:
            raise ValueError(f"{split}/{kind}: sample key {key!r} is empty or contains '.' or '/'")
        if key in seen:
            raise ValueError(f"{split}/{kind}: duplicate sample key {key!r}")
        seen.add(key)


def deterministic_order(samples: Iterable[Sample], seed: int, split: str, kind: str, part: int) -> list[Sample]:
    """Sort by key (so the caller's order does not matter), then shuffle reproducibly."""
    ordered = sorted(samples, key=lambda sample: sample[0])
    _check_keys(ordered, split, kind)
    permutation = np.random.default_rng(shuffle_seed(seed, split, kind, part)).permutation(len(ordered))
    return [ordered[i] for i in permutation]


def _write_one_shard(path: Path, samples: list[Sample]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        # encoder=False: fields are already bytes (schema.encode_case); mtime=0 for identical bytes.
        with wds.TarWriter(stream, encoder=False, mtime=0, user="dpr", group="dpr") as writer:
            for key, hist, fields in samples:
                writer.write({"__key__": key, **encode_case(hist, **fields)})


def write_shards(
    samples: Iterable[Sample],
    out_dir: str | Path,
    split: str,
    kind: str,
    part: int,
    samples_per_shard: int,
    seed: int,
) -> list[ShardRecord]:
    """Shuffle ``samples`` and write them as shards of ``samples_per_shard`` under ``out_dir``.

    Returns one ``(relpath, count, sha256)`` per shard, in index order; no samples, no shards.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    ordered = deterministic_order(samples, seed, split, kind, part)
    records: list[ShardRecord] = []
    for index, start in enumerate(range(0, len(ordered), samples_per_shard)):
        chunk = ordered[start : start + samples_per_shard]
        relpath = shard_name(split, kind, part, index)
        _write_one_shard(Path(out_dir) / relpath, chunk)
        records.append((relpath, len(chunk), sha256_file(Path(out_dir) / relpath)))
    return records


def count_shard_samples(path: str | Path) -> int:
    """Number of distinct sample keys in a shard; raises ValueError naming a damaged file."""
    keys: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                # A truncated member shows up as a short read, not always as a header error.
                archive.extractfile(member).read()
                keys.add(member.name.split(".", 1)[0])  # "<key>.<field>"; keys hold no dot
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable tar shard ({exc})") from None
    return len(keys)
