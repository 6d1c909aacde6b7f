"""Run the three DPR stages one after another (or a subset), each from the previous stage's checkpoint.

The same function runs on one process (the reference path) and on many (``deepspeed
launch/train.py``, ``torchrun``): :func:`make_runtime` picks the runtime, nothing else changes.

A stage whose checkpoint is complete and was made by the same *fingerprint* (model, seed, data,
this stage's settings, and the checkpoint it started from) is skipped; a stage with a resumable
state of the same fingerprint resumes from it (after a crash, kill -9, or a dead rank); anything
else trains the stage afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml

from dpr_dist import losses
from dpr_dist.common import schema
from dpr_dist.common.atomic import sha256_file
from dpr_dist.common.configio import from_dict
from dpr_dist.data.prepared import TRAINING_ITEM_COLUMNS, Prepared, load_prepared
from dpr_dist.data.reader import shard_loader
from dpr_dist.eval import baselines
from dpr_dist.modules import DPRModel, build_model
from dpr_dist.training.checkpoint import COMPLETE, CheckpointError, load_checkpoint
from dpr_dist.training.config import TrainConfig
from dpr_dist.training.loop import STAGE_ORDER, WEIGHTS, StageResult, train_stage
from dpr_dist.training.objectives import Context
from dpr_dist.training.runtime import LocalRuntime
from dpr_dist.training.validation import Validator

# Early stopping: warm-up on standard next-item, steer on the mean over the three paper tasks.
STEER_VALID_TASKS = (schema.TASK_STANDARD, schema.TASK_POSITIVE, schema.TASK_NEGATIVE)
LAUNCHER_ENV = "WORLD_SIZE"  # set by deepspeed, torchrun and every torch.distributed launcher


def popularity(prepared: Prepared) -> np.ndarray:
    return baselines.popularity_counts([p for p, _ in prepared.shards("train", schema.STAGE_WARMUP)], prepared.num_items)


def build_context(prepared: Prepared, counts: np.ndarray, device) -> Context:
    # Sampling distribution of the sampled softmax: training popularity, smoothed so every item can
    # be drawn; row 0 (padding) is never drawn.
    q = counts.astype(np.float64) + 1.0
    q[0] = 0.0
    q /= q.sum()
    with np.errstate(divide="ignore"):
        log_q = torch.from_numpy(np.log(q)).float()
    return Context(
        prompt_emb=prepared.prompt_embeddings.to(device),
        item_tag=prepared.item_tag.to(device),
        item_log_q=log_q.to(device),
        generator=torch.Generator(device="cpu"),
    )


def make_runtime(cfg: TrainConfig):
    """The reference runtime, or the distributed one (under a launcher, or distributed.mode: distributed)."""
    mode = cfg.distributed.mode
    launched = LAUNCHER_ENV in os.environ
    if mode == "reference":
        if launched and int(os.environ[LAUNCHER_ENV]) > 1:
            raise ValueError(f"distributed.mode=reference, but a launcher started {os.environ[LAUNCHER_ENV]} ranks: "
                             "every rank would train the whole model alone; set distributed.mode to auto")
        return LocalRuntime(cfg.device)
    if mode == "distributed" or launched:
        from dpr_dist.distributed.runtime import DistributedRuntime  # TorchRec and DeepSpeed only when used

        return DistributedRuntime(cfg)
    return LocalRuntime(cfg.device)


def tag_features(cfg: TrainConfig, prepared: Prepared) -> torch.Tensor | None:
    """The item table's fixed tag columns (ModelConfig.tag_features), or None."""
    if not cfg.model.tag_features:
        return None
    tags = len(prepared.tag_names)
    if tags >= cfg.model.hidden:
        raise ValueError(f"model.tag_features needs model.hidden > the {tags} tags of {prepared.root}, got {cfg.model.hidden}")
    return prepared.item_tag.to(torch.float32) * cfg.model.tag_feature_scale


def load_model(checkpoint_dir: str | Path, prepared: Prepared | None = None) -> tuple[DPRModel, TrainConfig, dict]:
    """Rebuild a model from a stage checkpoint (its own config says how), on one process."""
    state, config, metrics = load_checkpoint(checkpoint_dir)
    cfg = from_dict(TrainConfig, config, where=f"{checkpoint_dir}/config.yaml")
    weight = state["item_table.embedding.weight"]
    num_items = weight.shape[0] - 1
    if prepared is not None and prepared.num_items != num_items:
        raise ValueError(f"{checkpoint_dir}: trained on {num_items} items, {prepared.root} has {prepared.num_items}")
    fixed = int(metrics.get("item_table_fixed_columns", 0))
    model = build_model(cfg.model, num_items, fixed_columns=weight[:, weight.shape[1] - fixed :] if fixed else None)
    model.load_state_dict(state)
    model.eval()
    return model, cfg, metrics


# Settings that say how to run, not what to compute: they do not change a stage's result.
RUNTIME_KEYS = ("threads", "device", "distributed", "checkpoint_every_steps", "log_every_steps", "out_dir", "data_dir", "eval")


def stage_fingerprint(cfg: TrainConfig, stage: str, data_sha: str, start: str) -> str:
    """What a stage's result depends on: model, seed, data, its own settings, its starting checkpoint."""
    what = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS and k not in STAGE_ORDER}
    what.update(stage=stage, stage_config=dataclasses.asdict(cfg.stage(stage)), data=data_sha, start=start)
    return hashlib.sha256(yaml.safe_dump(what, sort_keys=True).encode()).hexdigest()


def _completed_fingerprint(stage_dir: Path) -> str | None:
    try:
        return json.loads((stage_dir / "metrics.json").read_text()).get("fingerprint") if (stage_dir / COMPLETE).exists() else None
    except (OSError, json.JSONDecodeError):
        return None


def _validator(stage: str, cfg: TrainConfig, prepared: Prepared, ctx: Context, runtime):
    st = cfg.stage(stage)
    common = dict(runtime=runtime, prompt_emb=ctx.prompt_emb, item_tag=ctx.item_tag, max_len=cfg.model.max_len,
                  batch_size=cfg.eval.batch_size, max_cases=st.eval_max_cases)

    if stage == "warmup":
        standard = Validator(prepared, "valid", [schema.TASK_STANDARD], "backbone", **common)

        def validate(trainer):
            m = standard(trainer)
            return "standard/ndcg@10", m["standard/ndcg@10"], m
        return validate

    if stage == "align":
        prompts = prepared.prompts
        positive = prompts[prompts["polarity"] > 0]
        tag_index = {t: i for i, t in enumerate(prepared.tag_names)}
        parts = []
        for name, part in (("held_out", positive[positive["held_out"]]), ("seen", positive[~positive["held_out"]])):
            if len(part):
                ids = torch.as_tensor(part["prompt_id"].to_numpy().copy(), device=runtime.device)
                tags = torch.as_tensor(part["tag"].map(tag_index).to_numpy().copy(), device=runtime.device)
                parts.append((name, ids, tags))

        def validate(trainer):
            # Alignment quality on phrasings never trained on (held-out templates): InfoNCE and the
            # share whose nearest tag centroid is the tag they name.
            out = {}
            centroids = ctx.tag_centroids(trainer.model.item_table)
            for name, ids, tags in parts:
                z = trainer.run(lambda model: model.projection(ctx.prompt_emb[ids]))
                out[f"{name}/infonce"] = float(losses.align_infonce(z, tags, centroids, st.temperature).mean())
                sims = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(centroids, dim=-1).T
                out[f"{name}/top1"] = float((sims.argmax(1) == tags).float().mean())
            key = "held_out/infonce" if "held_out/infonce" in out else "seen/infonce"
            return f"-{key}", -out[key], out
        return validate

    if stage == "steer":
        weight = st.violation_weight
        if weight < 0:
            raise ValueError(f"steer.violation_weight: {weight} must be >= 0")
        tasks = Validator(prepared, "valid", STEER_VALID_TASKS, "dpr", **common)
        name = f"mean_ndcg@10-{weight:g}*violation@10" if weight else "mean_ndcg@10"

        def validate(trainer):
            m = tasks(trainer)
            m["mean_ndcg@10"] = float(np.mean([m[f"{t}/ndcg@10"] for t in STEER_VALID_TASKS]))
            if weight:
                violation = m[f"{schema.TASK_NEGATIVE}/violation@10"]
                if np.isnan(violation):
                    raise ValueError("steer.violation_weight: the validation split has no negative case")
                m[name] = m["mean_ndcg@10"] - weight * violation
            return name, m[name], m
        return validate
    raise ValueError(f"unknown stage {stage!r}; stages: {STAGE_ORDER}")


def run_stages(cfg: TrainConfig, stages=STAGE_ORDER, prepared: Prepared | None = None, runtime=None) -> dict[str, StageResult]:
    """Train ``stages`` in order. A stage after the first starts from the previous stage's checkpoint
    in ``cfg.out_dir`` (so ``--stage steer`` alone continues a pipeline that finished align)."""
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {STAGE_ORDER}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runtime = runtime or make_runtime(cfg)
    prepared = prepared or load_prepared(cfg.data_dir, item_columns=TRAINING_ITEM_COLUMNS)
    dim = int(prepared.prompt_embeddings.shape[1])
    if cfg.model.prompt_dim != dim:
        raise ValueError(
            f"model.prompt_dim={cfg.model.prompt_dim} but {prepared.root} holds {dim}-d prompt embeddings "
            f"(encoder {prepared.manifest.get('encoder', {}).get('kind', '?')}): set model.prompt_dim: {dim}"
        )
    out_dir = Path(cfg.out_dir)
    counts = popularity(prepared)
    ctx = build_context(prepared, counts, runtime.device)
    data_sha = sha256_file(Path(prepared.root) / schema.MANIFEST_NAME)
    results = {}
    for stage in [s for s in STAGE_ORDER if s in stages and cfg.stage(s).enabled]:
        st = cfg.stage(stage)
        stage_dir = out_dir / stage
        previous = _previous_checkpoint(out_dir, stage, cfg)
        start = sha256_file(previous / COMPLETE) if previous else "init"
        fingerprint = stage_fingerprint(cfg, stage, data_sha, start)
        if _completed_fingerprint(stage_dir) == fingerprint:
            if runtime.is_main:
                print(f"[{stage}] up to date: {stage_dir} (same configuration, data and starting checkpoint)")
            continue
        model = runtime.build_model(cfg.model, prepared.num_items, cfg.seed, st, fixed_columns=tag_features(cfg, prepared))
        if previous:
            load_checkpoint(previous)  # verifies the checksums, names a corrupt or partial checkpoint
            runtime.load_weights(model, previous / WEIGHTS)
        loader = shard_loader(prepared, "train", stage, global_batch=st.batch_size, max_len=cfg.model.max_len,
                              seed=cfg.seed, shuffle=True, rank=runtime.rank, world=runtime.world_size)
        results[stage] = train_stage(
            stage, cfg, runtime, model, loader, _validator(stage, cfg, prepared, ctx, runtime), ctx, out_dir,
            fingerprint, extra_metrics={"data_manifest_sha256": data_sha},
        )
    return results


def _previous_checkpoint(out_dir: Path, stage: str, cfg: TrainConfig) -> Path | None:
    """The checkpoint a stage starts from: the nearest earlier enabled stage's (None for the first)."""
    earlier = [s for s in STAGE_ORDER[: STAGE_ORDER.index(stage)] if cfg.stage(s).enabled]
    if not earlier:
        return None
    path = out_dir / earlier[-1]
    if not (path / COMPLETE).exists():
        raise CheckpointError(f"stage {stage} starts from {path}, which is not a complete checkpoint: run {earlier[-1]} first")
    return path


def config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
