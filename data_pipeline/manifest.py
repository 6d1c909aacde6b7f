"""manifest.json: what a prepared data set holds and the checksums that prove it.

The manifest is written last and atomically, so a directory without one is an unfinished run.
Layout (``dpr_dist.common.schema`` describes the data files themselves)::

    schema_version, name, config (resolved, absolute paths), config_hash, code_version,
    sources {path: sha256}, counts {users, items, interactions, prompts, samples {"split/kind": n}},
    tags [...], encoder {kind, dim, model}, stats {...from normalise},
    files {relpath: {bytes, sha256}}             items.parquet, prompts.parquet, prompt_embeddings.npy
    shards {relpath: {split, kind, count, bytes, sha256}}
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import dpr_dist
from dpr_dist.common.atomic import sha256_file, write_json_atomic
from dpr_dist.common.schema import MANIFEST_NAME, SCHEMA_VERSION, SHARD_SETS


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples and paths -> plain JSON types (normalise's stats hold numpy)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(config: dict) -> str:
    """Hash of the resolved config and the schema version: what decides if old output is reusable.

    ``output_dir`` is left out: where a data set lives is not part of what it is, so a moved or
    copied directory is still up to date and its partition markers still apply.
    """
    content = {k: v for k, v in config.items() if k != "output_dir"}
    canonical = json.dumps({"schema_version": SCHEMA_VERSION, "config": jsonable(content)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (a job's copy has no .git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{dpr_dist.__version__}+{commit}" if commit else dpr_dist.__version__


def file_entry(path: str | Path) -> dict:
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def shard_entries(records: Iterable[tuple[str, str, str, int, str]], out_dir: str | Path) -> dict:
    """(split, kind, relpath, count, sha256) rows -> the manifest's ``shards`` mapping."""
    return {
        relpath: {
            "split": split,
            "kind": kind,
            "count": count,
            "bytes": (Path(out_dir) / relpath).stat().st_size,
            "sha256": sha,
        }
        for split, kind, relpath, count, sha in records
    }


def samples_per_set(shards: dict) -> dict[str, int]:
    counts = {f"{split}/{kind}": 0 for split, kind in SHARD_SETS}
    for entry in shards.values():
        key = f"{entry['split']}/{entry['kind']}"
        counts[key] = counts.get(key, 0) + entry["count"]
    return counts


def build_manifest(
    *,
    name: str,
    config: dict,
    sources: dict[str, str],
    counts: dict,
    tags: list[str],
    encoder: dict,
    stats: dict,
    files: dict,
    shards: dict,
) -> dict:
    return jsonable(
        {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "config": config,
            "config_hash": config_hash(config),
            "code_version": code_version(),
            "sources": dict(sorted(sources.items())),
            "counts": {**counts, "samples": samples_per_set(shards)},
            "tags": list(tags),
            "encoder": encoder,
            "stats": stats,
            "files": files,
            "shards": dict(sorted(shards.items())),
        }
    )


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path
