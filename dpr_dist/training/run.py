"""Run the three DPR stages one after another (or a subset), each from the previous checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from dpr_dist.common import schema
from dpr_dist.common.atomic import sha256_file
from dpr_dist.common.configio import from_dict
from dpr_dist.data.prepared import Prepared, load_prepared
from dpr_dist.data.reader import shard_loader
from dpr_dist.eval import baselines
from dpr_dist.eval.harness import EvalInputs, mean_ndcg10
from dpr_dist import losses
from dpr_dist.modules import DPRModel, build_model
from dpr_dist.training.checkpoint import load_checkpoint
from dpr_dist.training.config import TrainConfig
from dpr_dist.training.loop import STAGE_ORDER, StageResult, train_stage
from dpr_dist.training.objectives import Context

# Early stopping: warm-up on standard next-item, steer on the mean over the three paper tasks.
STEER_VALID_TASKS = (schema.TASK_STANDARD, schema.TASK_POSITIVE, schema.TASK_NEGATIVE)


def popularity(prepared: Prepared) -> np.ndarray:
    return baselines.popularity_counts([p for p, _ in prepared.shards("train", schema.STAGE_WARMUP)], prepared.num_items)


def build_context(prepared: Prepared, counts: np.ndarray, device: str) -> Context:
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


def model_for(cfg: TrainConfig, prepared: Prepared) -> DPRModel:
    """A freshly initialised model sized for the prepared data (seeded by cfg.seed)."""
    dim = int(prepared.prompt_embeddings.shape[1])
    if cfg.model.prompt_dim != dim:
        raise ValueError(
            f"model.prompt_dim={cfg.model.prompt_dim} but {prepared.root} holds {dim}-d prompt embeddings "
            f"(encoder {prepared.manifest.get('encoder', {}).get('kind', '?')}): set model.prompt_dim: {dim}"
        )
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, prepared.num_items).to(cfg.device)


def load_model(checkpoint_dir: str | Path, prepared: Prepared | None = None) -> tuple[DPRModel, TrainConfig, dict]:
    """Rebuild a model from a stage checkpoint (its own config says how)."""
    state, config, metrics = load_checkpoint(checkpoint_dir)
    cfg = from_dict(TrainConfig, config, where=f"{checkpoint_dir}/config.yaml")
    num_items = state["item_table.embedding.weight"].shape[0] - 1
    if prepared is not None and prepared.num_items != num_items:
        raise ValueError(f"{checkpoint_dir}: trained on {num_items} items, {prepared.root} has {prepared.num_items}")
    model = build_model(cfg.model, num_items)
    model.load_state_dict(state)
    model.eval()
    return model, cfg, metrics


def _validator(stage: str, cfg: TrainConfig, prepared: Prepared, ctx: Context, eval_inputs: EvalInputs):
    st = cfg.stage(stage)

    if stage == "warmup":
        def validate(model):
            m = mean_ndcg10(model, prepared, "valid", [schema.TASK_STANDARD], eval_inputs,
                            max_cases=st.eval_max_cases, methods=("backbone",))
            return "standard/ndcg@10", m["standard/ndcg@10"], m
        return validate

    if stage == "align":
        prompts = prepared.prompts
        positive = prompts[prompts["polarity"] > 0]
        tag_index = {t: i for i, t in enumerate(prepared.tag_names)}

        def validate(model):
            # Alignment quality on phrasings never trained on (held-out templates): InfoNCE and the
            # share whose nearest tag centroid is the tag they name.
            out = {}
            centroids = ctx.tag_centroids(model.item_table.weight)
            for name, part in (("held_out", positive[positive["held_out"]]), ("seen", positive[~positive["held_out"]])):
                if not len(part):
                    continue
                ids = torch.as_tensor(part["prompt_id"].to_numpy().copy())
                tags = torch.as_tensor(part["tag"].map(tag_index).to_numpy().copy())
                z = model.projection(ctx.prompt_emb[ids])
                out[f"{name}/infonce"] = float(losses.align_infonce(z, tags, centroids, st.temperature))
                sims = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(centroids, dim=-1).T
                out[f"{name}/top1"] = float((sims.argmax(1) == tags).float().mean())
            key = "held_out/infonce" if "held_out/infonce" in out else "seen/infonce"
            return f"-{key}", -out[key], out
        return validate

    if stage == "steer":
        def validate(model):
            m = mean_ndcg10(model, prepared, "valid", STEER_VALID_TASKS, eval_inputs, max_cases=st.eval_max_cases)
            mean = float(np.mean([m[f"{t}/ndcg@10"] for t in STEER_VALID_TASKS]))
            return "mean_ndcg@10", mean, {**m, "mean_ndcg@10": mean}
        return validate
    raise ValueError(f"unknown stage {stage!r}; stages: {STAGE_ORDER}")


def run_stages(cfg: TrainConfig, stages=STAGE_ORDER, prepared: Prepared | None = None) -> dict[str, StageResult]:
    """Train ``stages`` in order. A stage after the first starts from the previous stage's checkpoint
    in ``cfg.out_dir`` (so ``--stage steer`` alone resumes a pipeline that finished align)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prepared = prepared or load_prepared(cfg.data_dir)
    out_dir = Path(cfg.out_dir)
    counts = popularity(prepared)
    ctx = build_context(prepared, counts, cfg.device)
    eval_inputs = EvalInputs(prompt_emb=ctx.prompt_emb, item_tag=ctx.item_tag, popularity=counts)
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {STAGE_ORDER}")
    stages = [s for s in STAGE_ORDER if s in stages and cfg.stage(s).enabled]
    model = model_for(cfg, prepared)
    if stages:
        first = STAGE_ORDER.index(stages[0])
        if first > 0:
            previous = out_dir / STAGE_ORDER[first - 1]
            model, _, _ = load_model(previous, prepared)
            model.cfg = cfg.model  # this run's model config (e.g. routing) applies from here on
    results = {}
    data_sha = sha256_file(Path(prepared.root) / schema.MANIFEST_NAME)
    for stage in stages:
        st = cfg.stage(stage)

        def make_batches(name, epoch, st=st):
            loader = shard_loader(
                prepared, "train", name, global_batch=st.batch_size, max_len=cfg.model.max_len,
                seed=cfg.seed, shuffle=True,
            )
            loader.epoch = epoch
            return loader

        results[stage] = train_stage(
            stage, cfg, model, make_batches, _validator(stage, cfg, prepared, ctx, eval_inputs), ctx,
            out_dir, extra_metrics={"data_manifest_sha256": data_sha},
        )
    return results


def config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
