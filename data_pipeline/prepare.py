"""Prepare one data set end to end on Ray.

    python -m data_pipeline.prepare --config configs/data/ml-100k.yaml [--set key=value ...]
                                    [--ray-address auto|<addr>]

Steps: ingest and normalise (driver), build the prompt table, encode prompts with a Ray Data actor
pool, then one Ray task per user partition (user_id % num_partitions) that builds its cases and
writes its shards (align cases go to partition 0), then items.parquet, prompts.parquet,
prompt_embeddings.npy, config.yaml and, last, manifest.json.

Paths. Relative ``output_dir``, ``source.path`` and ``source.items_path`` are resolved on the driver,
before anything else, against ``$DPR_DATA_ROOT`` when it is set, else the current directory.
``ray job submit --working-dir .`` runs the job in an unpacked *copy* of the working directory, so
there relative paths would land in (and read from) that copy: give absolute paths, or set
DPR_DATA_ROOT for the job, e.g. ``--runtime-env-json '{"env_vars": {"DPR_DATA_ROOT": "'$PWD'"}}'``.

Reruns. If the output already holds a manifest with the same config hash, unchanged sources and
shards that verify, the run prints "up to date" and exits 0. After a crash, partitions whose marker
(see data_pipeline/progress.py) matches are not redone. Same inputs and config give byte-identical
shards, parquet and npy files.

Ray: ``--ray-address`` or ``$RAY_ADDRESS`` (set by ``ray job submit``) connects to that cluster;
otherwise a private local instance with ``--num-cpus`` CPUs is started and shut down at the end.
An already initialised Ray (tests) is used as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import yaml

from data_pipeline.config import DataConfig
from data_pipeline.encode import encode_prompts_ray, encoder_info
from data_pipeline.manifest import (
    build_manifest,
    config_hash,
    file_entry,
    jsonable,
    shard_entries,
    write_manifest,
)
from data_pipeline.progress import ShardRow, StepTimer, finished_partition, write_partition_marker
from data_pipeline.records import BadInputError
from data_pipeline.shards import write_shards
from data_pipeline.templates import check_phrasings
from data_pipeline.verify import verify_dataset
from dpr_dist.common.atomic import atomic_path, sha256_file, write_bytes_atomic
from dpr_dist.common.configio import ConfigError, load_yaml, parse_overrides, to_dict
from dpr_dist.common.schema import (
    DATA_CONFIG_NAME,
    ITEM_TEXT_EMB_NAME,
    ITEMS_NAME,
    MANIFEST_NAME,
    PROMPT_EMB_NAME,
    PROMPTS_NAME,
    SHARD_DIR,
    SHARD_SETS,
    STAGE_ALIGN,
    TAG_TEXT_EMB_NAME,
    read_manifest,
)


def data_root() -> Path:
    """Base of relative data paths: $DPR_DATA_ROOT, else the current working directory."""
    return Path(os.environ.get("DPR_DATA_ROOT") or os.getcwd()).resolve()


def _absolute(path: str | None, base: Path) -> str | None:
    if not path:
        return path
    return str((base / Path(path).expanduser()).resolve())


def resolve_paths(cfg: DataConfig, base: Path) -> DataConfig:
    """A copy of ``cfg`` whose output and source paths are absolute (relative ones taken from ``base``)."""
    source = dataclasses.replace(
        cfg.source, path=_absolute(cfg.source.path, base), items_path=_absolute(cfg.source.items_path, base)
    )
    return dataclasses.replace(cfg, source=source, output_dir=_absolute(cfg.output_dir, base))


def run_hash(cfg_hash: str, sources: dict[str, str]) -> str:
    """Identity of one run's inputs: config and source *contents* (partition markers carry it)."""
    return config_hash({"config_hash": cfg_hash, "sources": sorted(sources.values())})


def source_checksums(paths: list[str]) -> dict[str, str]:
    return {str(Path(p).resolve()): sha256_file(p) for p in sorted(set(paths))}


def is_up_to_date(out_dir: Path, cfg_hash: str) -> bool:
    """Manifest present with this config hash, its sources unchanged, and everything verifies."""
    try:
        manifest = read_manifest(out_dir)
    except ValueError:
        return False
    if manifest.get("config_hash") != cfg_hash:
        return False
    for path, sha in manifest.get("sources", {}).items():
        if not Path(path).is_file() or sha256_file(path) != sha:
            return False
    return not verify_dataset(out_dir)


def partition_user_ids(num_users: int, part: int, num_partitions: int) -> list[int]:
    """Dense user ids 1..U assigned to ``part`` (user_id % num_partitions == part)."""
    return [uid for uid in range(1, num_users + 1) if uid % num_partitions == part]


def prepare_partition(catalog, prompts_df, cfg: DataConfig, part: int, inputs_hash: str) -> tuple[list[ShardRow], bool]:
    """Build and shard one partition's cases; returns (shard rows, skipped because already done)."""
    from data_pipeline.cases import build_align_cases, build_cases

    out_dir = Path(cfg.output_dir)
    done = finished_partition(out_dir, part, inputs_hash)
    if done is not None:
        return done, True
    user_ids = partition_user_ids(catalog.num_users, part, cfg.num_partitions)
    cases = dict(build_cases(catalog, prompts_df, cfg, user_ids))
    align_key = ("train", STAGE_ALIGN)
    # Align cases do not depend on users: exactly one partition writes them.
    cases[align_key] = build_align_cases(prompts_df, catalog.tags) if part == 0 else []
    unknown = sorted(set(cases) - set(SHARD_SETS))
    if unknown:
        raise ValueError(f"build_cases returned shard sets {unknown} that schema.SHARD_SETS does not define")
    rows: list[ShardRow] = []
    for split, kind in SHARD_SETS:
        records = write_shards(cases.get((split, kind), []), out_dir, split, kind, part, cfg.samples_per_shard, cfg.seed)
        rows += [(split, kind, relpath, count, sha) for relpath, count, sha in records]
    write_partition_marker(out_dir, part, inputs_hash, rows)
    return rows, False


def _write_parquet(path: Path, frame) -> None:
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def baseline_texts(catalog, max_chars: int) -> tuple[list[str], list[str]]:
    """Texts the text-rerank baseline compares: each item's text (row = item id; an item with no
    text falls back to its title, then its original id) and each tag's display name."""
    from data_pipeline.templates import tag_display

    items = []
    for text, title, original in catalog.items[["text", "title", "original_id"]].itertuples(index=False):
        items.append((text or title or f"item {original}")[:max_chars])
    return items, [tag_display(t) for t in catalog.tags]


def encode_texts(prompts_df, catalog, cfg: DataConfig) -> dict[str, np.ndarray]:
    """One actor-pool pass over prompts (+ item texts and tag names): {file name: float32 array}."""
    prompts = prompts_df["text"].tolist()
    items, tags = baseline_texts(catalog, cfg.encoder.max_prompt_chars) if cfg.encoder.encode_item_texts else ([], [])
    emb = encode_prompts_ray(prompts + items + tags, cfg.encoder)
    out = {PROMPT_EMB_NAME: emb[: len(prompts)]}
    if items:
        item_emb = np.zeros((len(items) + 1, emb.shape[1]), dtype=np.float32)  # row 0: padding
        item_emb[1:] = emb[len(prompts): len(prompts) + len(items)]
        out[ITEM_TEXT_EMB_NAME] = item_emb
        out[TAG_TEXT_EMB_NAME] = emb[len(prompts) + len(items):]
    return out


def write_tables(out_dir: Path, catalog, prompts_df, arrays: dict[str, np.ndarray]) -> dict:
    _write_parquet(out_dir / ITEMS_NAME, catalog.items[["item_id", "original_id", "title", "tags", "text"]])
    _write_parquet(out_dir / PROMPTS_NAME, prompts_df)
    for name, array in arrays.items():
        _write_npy(out_dir / name, np.ascontiguousarray(array, dtype=np.float32))
    return {name: file_entry(out_dir / name) for name in (ITEMS_NAME, PROMPTS_NAME, *arrays)}


def remove_stale_files(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete shards of an earlier, different run (under shards/ only) and the temp files a killed
    run leaves behind (atomic_path names them ".<final name>.<random>.tmp")."""
    removed = []
    for path in sorted(out_dir.rglob("*")):
        relpath = path.relative_to(out_dir).as_posix()
        is_temp = path.name.startswith(".") and path.name.endswith(".tmp")
        is_stale_shard = relpath.startswith(f"{SHARD_DIR}/") and path.suffix == ".tar" and relpath not in keep
        if path.is_file() and (is_temp or is_stale_shard):
            path.unlink()
            removed.append(relpath)
    return removed


def run_partitions(catalog, prompts_df, cfg: DataConfig, inputs_hash: str) -> tuple[list[ShardRow], int]:
    """One Ray task per partition, with a progress bar; returns all shard rows and the skip count."""
    from tqdm import tqdm

    task = ray.remote(prepare_partition)
    catalog_ref, prompts_ref = ray.put(catalog.without_item_texts()), ray.put(prompts_df)
    pending = [task.remote(catalog_ref, prompts_ref, cfg, part, inputs_hash) for part in range(cfg.num_partitions)]
    results = {}
    order = {ref: part for part, ref in enumerate(pending)}
    with tqdm(total=len(pending), desc="partitions", unit="part", file=sys.stdout) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results[order[ready[0]]] = ray.get(ready[0])
            bar.update(1)
    rows = [row for part in sorted(results) for row in results[part][0]]
    return rows, sum(1 for _, skipped in results.values() if skipped)


def connect_ray(address: str | None, num_cpus: int) -> bool:
    """Connect or start Ray; True if this call started (and so must stop) it."""
    if ray.is_initialized():
        return False
    # A plain local ray.init() would otherwise write ~/.ray/auth_token and switch later clusters
    # on this machine to token auth, which breaks `ray job submit` (ENV_NOTES).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # address="local": never attach to some other cluster that happens to run on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    return True


def prepare(cfg: DataConfig, cache_dir: Path) -> int:
    """Run every step for a resolved config (absolute paths); Ray must be connected.

    Does not check whether the output is already up to date (``main`` does, before starting Ray).
    """
    from data_pipeline.ingest import load_source
    from data_pipeline.normalise import normalise
    from data_pipeline.templates import build_prompts

    out_dir = Path(cfg.output_dir)
    resolved = to_dict(cfg)
    cfg_hash = config_hash(resolved)
    # From here on the directory is incomplete until the new manifest lands.
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    timer = StepTimer()
    with timer.step("ingest"):
        raw = load_source(cfg.source, skip_bad_rows=cfg.skip_bad_rows, cache_dir=cache_dir, seed=cfg.seed)
        sources = source_checksums(raw.sources)
    with timer.step("normalise"):
        catalog = normalise(raw, cfg)
    with timer.step("prompts"):
        prompts_df = build_prompts(catalog.tags, cfg.phrasings)
    with timer.step("encode texts"):
        arrays = encode_texts(prompts_df, catalog, cfg)
    with timer.step("cases + shards"):
        rows, skipped = run_partitions(catalog, prompts_df, cfg, run_hash(cfg_hash, sources))
    with timer.step("tables + manifest"):
        shards = shard_entries(rows, out_dir)
        removed = remove_stale_files(out_dir, set(shards))
        files = write_tables(out_dir, catalog, prompts_df, arrays)
        write_bytes_atomic(out_dir / DATA_CONFIG_NAME, yaml.safe_dump(jsonable(resolved), sort_keys=False).encode())
        counts = {
            "users": catalog.num_users,
            "items": catalog.num_items,
            "interactions": int(sum(len(s) for s in catalog.sequences)),
            "prompts": len(prompts_df),
        }
        manifest = build_manifest(
            name=cfg.name, config=resolved, sources=sources, counts=counts, tags=list(catalog.tags),
            encoder=encoder_info(cfg.encoder), stats={**catalog.stats, "skipped_rows": raw.skipped_rows},
            files=files, shards=shards,
        )
        write_manifest(out_dir, manifest)
    _print_summary(out_dir, manifest, skipped, cfg.num_partitions, len(removed), timer)
    return 0


def _print_summary(out_dir: Path, manifest: dict, skipped: int, partitions: int, removed: int, timer: StepTimer) -> None:
    counts = manifest["counts"]
    print(f"[prepare] wrote {out_dir}")
    print(f"  users {counts['users']}, items {counts['items']}, interactions {counts['interactions']}, "
          f"prompts {counts['prompts']}, tags {len(manifest['tags'])}, shards {len(manifest['shards'])}")
    print("  samples: " + ", ".join(f"{k} {v}" for k, v in counts["samples"].items()))
    print(f"  partitions reused from an earlier run: {skipped}/{partitions}; stale files removed: {removed}")
    print(timer.summary(), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a configs/data/*.yaml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted for nested keys (encoder.kind=hash); repeatable")
    parser.add_argument("--ray-address", default=None, help="connect to this cluster (auto or host:port)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the private local Ray instance")
    parser.add_argument("--cache-dir", default=None, help="downloads cache (default: <data root>/data/cache)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = data_root()
    try:
        cfg = load_yaml(DataConfig, Path(args.config).resolve(), parse_overrides(args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = resolve_paths(cfg, base)
    if cfg.num_partitions < 1:
        print(f"error: {args.config}: num_partitions must be >= 1, got {cfg.num_partitions}", file=sys.stderr)
        return 2
    try:
        check_phrasings(cfg.phrasings)
    except ValueError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    cache_dir = Path(_absolute(args.cache_dir, base) if args.cache_dir else base / "data" / "cache")
    # Checked before Ray starts: an up-to-date rerun should cost seconds, not a cluster start.
    if is_up_to_date(Path(cfg.output_dir), config_hash(to_dict(cfg))):
        print(f"[prepare] {cfg.output_dir}: up to date; nothing to do")
        return 0
    started = connect_ray(args.ray_address, args.num_cpus)
    try:
        return prepare(cfg, cache_dir)
    except (BadInputError, FileNotFoundError) as exc:
        # Bad or missing input is the user's to fix: the message names the file (and line).
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
