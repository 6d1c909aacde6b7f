"""Prompt-side ablation on a finished run: the same warm-up (and, where it still fits, align)
checkpoint, a change that concerns only modules the warm-up did not train, the later stages trained
again, then the TEST-split evaluation. A/B of a steering change without hours of warm-up per arm.

    OMP_NUM_THREADS=1 python benchmarks/steer_ablation.py --from runs/bench-ml1m/sasrec-s0 \
        --out runs/gate-floor/sasrec-s0 --set model.fusion_gate_floor=0.05 --set threads=1
    # another prompt encoder: the same cases and shards, other prompt embeddings (align is retrained);
    # here the recipe's data without the feeling reading
    OMP_NUM_THREADS=1 python benchmarks/steer_ablation.py --from runs/full-sas1/sasrec-s1 \
        --out runs/summary-only/sasrec-s1 --set data_dir=data/ml-1m-minilm-smollm2 \
        --set model.prompt_dim=960 --set threads=1

Which stages are retrained: steer alone when the change leaves every tensor the warm-up and align
trained in place; align and steer when it changes a tensor only align trained (the projection, e.g.
a new ``model.prompt_dim``) or the prompt embeddings (``data_dir`` naming a data set whose cases,
shards, items and prompt texts are the source's to the byte: anything else is refused). The first
retrained stage starts from a re-made copy of the checkpoint before it: every tensor whose name and
shape still fit is copied; a tensor that no longer fits must belong to a module no earlier stage
trained, and takes the changed model's seeded initialisation, as a run from scratch with the change
would have it. A change to a warm-up-trained module is refused (it needs a new run). Writes
``<out>/warmup`` (copied or re-made), ``<out>/align`` (re-made or retrained), ``<out>/steer`` and
``<out>/report``; a re-made checkpoint's config is the changed one and its metrics name the source
and the re-initialised tensors. Rerunning the command skips what is up to date.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_quality import evaluate_on_test, run  # noqa: E402
from dpr_dist.common.configio import load_yaml, parse_overrides  # noqa: E402
from dpr_dist.common.schema import ITEMS_NAME, PROMPT_EMB_NAME, PROMPTS_NAME, read_manifest  # noqa: E402
from dpr_dist.modules import build_model  # noqa: E402
from dpr_dist.training.checkpoint import COMPLETE, load_checkpoint, save_checkpoint  # noqa: E402
from dpr_dist.training.config import TrainConfig  # noqa: E402
from dpr_dist.training.loop import STAGE_ORDER  # noqa: E402
from dpr_dist.training.run import config_dict  # noqa: E402


def _refit(src: Path, overrides: dict):
    """(changed config, source metrics, the checkpoint's tensors for the changed model, keys that no
    longer fit it and were re-initialised, keys the changed model no longer has)."""
    state, _, metrics = load_checkpoint(src)
    cfg = load_yaml(TrainConfig, src / "config.yaml", overrides)
    table = state["item_table.embedding.weight"]
    fixed = int(metrics.get("item_table_fixed_columns", 0))
    model = build_model(cfg.model, table.shape[0] - 1, seed=cfg.seed,
                        fixed_columns=table[:, table.shape[1] - fixed:] if fixed else None)
    fresh = model.state_dict()
    fits = {key for key in fresh if key in state and fresh[key].shape == state[key].shape}
    out = {key: state[key] if key in fits else fresh[key] for key in fresh}
    return cfg, metrics, out, sorted(set(fresh) - fits), sorted(set(state) - set(fresh))


def changed_modules(src: Path, overrides: dict) -> set[str]:
    """The top-level modules of which a tensor no longer fits the changed model, or is gone from it."""
    _, _, _, reinitialised, dropped = _refit(src, overrides)
    return {key.split(".")[0] for key in reinitialised + dropped}


def remake_checkpoint(src: Path, dst: Path, overrides: dict, trained: set[str]) -> list[str]:
    """Write ``dst`` = the checkpoint ``src`` for the changed config; returns the re-initialised keys.
    ``trained``: the modules ``src``'s stage and those before it trained (they must still fit)."""
    cfg, metrics, out, reinitialised, dropped = _refit(src, overrides)
    for key in reinitialised + dropped:
        if key.split(".")[0] in trained:
            raise SystemExit(f"{src}: {key} no longer fits the changed model, and an earlier stage trained it "
                             f"({key.split('.')[0]}): this change needs a new run, not a steer ablation")
    save_checkpoint(dst, out, config_dict(cfg), {**metrics, "remade_from": str(src), "reinitialised": reinitialised})
    return reinitialised


def prompt_embeddings_differ(old_dir: str, new_dir: str) -> bool:
    """True when ``new_dir`` holds other prompt embeddings for the cases of ``old_dir`` (False: the same
    data set); SystemExit when anything but the embeddings differs (shards, items, prompt texts)."""
    if Path(old_dir).resolve() == Path(new_dir).resolve():
        return False
    old, new = read_manifest(old_dir), read_manifest(new_dir)
    same = lambda m: (m["shards"], {name: m["files"][name]["sha256"] for name in (ITEMS_NAME, PROMPTS_NAME)})
    if same(old) != same(new):
        raise SystemExit(f"data_dir={new_dir}: its shards, items or prompt texts differ from those of {old_dir}; "
                         "an ablation may change the prompt embeddings only")
    return old["files"][PROMPT_EMB_NAME]["sha256"] != new["files"][PROMPT_EMB_NAME]["sha256"]


def first_retrained_stage(src: Path, overrides: dict) -> str:
    """"steer" or "align" (see the module docstring); SystemExit for a change a warm-up trained."""
    cfg = load_yaml(TrainConfig, src / "warmup" / "config.yaml", overrides)
    source_data = load_yaml(TrainConfig, src / "warmup" / "config.yaml").data_dir
    changed = changed_modules(src / "warmup", overrides)
    if changed & set(cfg.warmup.train):
        raise SystemExit(f"the change alters {sorted(changed & set(cfg.warmup.train))}, which the warm-up trained: "
                         "this change needs a new run, not an ablation")
    if prompt_embeddings_differ(source_data, cfg.data_dir) or changed & set(cfg.align.train):
        return "align"
    return "steer"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="a finished run: <dir>/warmup and <dir>/align")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the change (model or steer keys)")
    args = ap.parse_args(argv)
    src, out = args.src.resolve(), args.out.resolve()
    overrides = {**parse_overrides(args.set), "out_dir": str(out)}
    if not (src / "warmup" / COMPLETE).exists():
        raise SystemExit(f"--from {src}: {src / 'warmup'} is not a complete checkpoint")
    first = first_retrained_stage(src, overrides)
    if first == "steer" and not (src / "align" / COMPLETE).exists():
        raise SystemExit(f"--from {src}: {src / 'align'} is not a complete checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    before = "warmup" if first == "align" else "align"
    if not (out / before / COMPLETE).exists():
        cfg = load_yaml(TrainConfig, src / "warmup" / "config.yaml", overrides)
        trained = {m for stage in STAGE_ORDER[: STAGE_ORDER.index(first)] for m in cfg.stage(stage).train}
        reinit = remake_checkpoint(src / before, out / before, overrides, trained)
        print(f"{out / before}: re-made for the changed model; re-initialised: {reinit}")
    if first == "steer" and not (out / "warmup" / COMPLETE).exists():
        shutil.rmtree(out / "warmup", ignore_errors=True)
        shutil.copytree(src / "warmup", out / "warmup")
    log = out / "run.log"
    stages = STAGE_ORDER[STAGE_ORDER.index(first):]
    run([sys.executable, "-m", "launch.train", "--config", str(out / before / "config.yaml"),
         *sum((["--stage", stage] for stage in stages), [])], log)
    print(f"report: {evaluate_on_test(out, log)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
