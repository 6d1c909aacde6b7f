"""Check a prepared data set against its manifest: ``python -m data_pipeline.verify <dir>``.

Every shard must exist with the recorded size, sha256 and sample count; items, prompts and the
prompt embeddings must match their checksums; the embedding matrix must be [prompts, encoder dim].
Each problem is printed on its own line naming the file; the exit code is 1 if there is any.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dpr_dist.common.atomic import sha256_file
from dpr_dist.common.schema import PROMPT_EMB_NAME, SHARD_DIR, read_manifest
from data_pipeline.shards import count_shard_samples


def _check_file(root: Path, relpath: str, entry: dict) -> list[str]:
    path = root / relpath
    if not path.is_file():
        return [f"{relpath}: missing"]
    size = path.stat().st_size
    if size < entry["bytes"]:
        return [f"{relpath}: truncated ({size} bytes, manifest says {entry['bytes']})"]
    if size > entry["bytes"]:
        return [f"{relpath}: size changed ({size} bytes, manifest says {entry['bytes']})"]
    if sha256_file(path) != entry["sha256"]:
        return [f"{relpath}: altered (sha256 differs from the manifest)"]
    return []


def _check_shard(root: Path, relpath: str, entry: dict) -> list[str]:
    problems = _check_file(root, relpath, entry)
    if problems:
        return problems
    try:
        count = count_shard_samples(root / relpath)
    except ValueError as exc:
        return [f"{relpath}: {exc}"]
    if count != entry["count"]:
        return [f"{relpath}: holds {count} samples, manifest says {entry['count']}"]
    return []


def _check_embeddings(root: Path, manifest: dict) -> list[str]:
    want = (manifest["counts"]["prompts"], manifest["encoder"]["dim"])
    shape = np.load(root / PROMPT_EMB_NAME, mmap_mode="r").shape
    if shape != want:
        return [f"{PROMPT_EMB_NAME}: shape {shape}, manifest implies [prompts, dim] = {list(want)}"]
    return []


def verify_dataset(root: str | Path) -> list[str]:
    """All problems found in the prepared directory ``root`` (empty list: it verifies)."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    for relpath, entry in sorted(manifest["files"].items()):
        problems += _check_file(root, relpath, entry)
    if not any(p.startswith(PROMPT_EMB_NAME) for p in problems):
        problems += _check_embeddings(root, manifest)
    for relpath, entry in sorted(manifest["shards"].items()):
        problems += _check_shard(root, relpath, entry)
    # A stray shard would be read by anyone who globs the directory instead of using the manifest.
    listed = set(manifest["shards"])
    for path in sorted((root / SHARD_DIR).rglob("*.tar")):
        relpath = path.relative_to(root).as_posix()
        if relpath not in listed:
            problems.append(f"{relpath}: shard not listed in the manifest")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.verify", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="a prepared data set (the directory holding manifest.json)")
    args = parser.parse_args(argv)
    problems = verify_dataset(args.directory)
    for problem in problems:
        print(f"{args.directory}: {problem}")
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {args.directory}")
        return 1
    manifest = read_manifest(args.directory)
    samples = sum(entry["count"] for entry in manifest["shards"].values())
    print(f"OK: {args.directory}: {len(manifest['shards'])} shards, {samples} samples, "
          f"{len(manifest['files'])} data files verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
