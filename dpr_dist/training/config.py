"""Configuration of a training run (``configs/train/*.yaml``): the model and the three stages."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpr_dist.modules.config import ModelConfig

# Module groups a stage can train; everything else is frozen (and stays bit-identical).
MODULE_GROUPS = ("backbone", "item_table", "projection", "experts", "router", "fusion")


@dataclass
class StageConfig:
    enabled: bool = True
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3              # AdamW, dense modules
    weight_decay: float = 0.0
    item_lr: float = 0.05         # row-wise Adagrad, item table (only if "item_table" is trained)
    grad_clip: float = 1.0        # dense modules only: the table update is never clipped
    train: list[str] = field(default_factory=list)   # subset of MODULE_GROUPS
    patience: int = 3             # early stopping, on the validation metric, never on test
    max_steps_per_epoch: int | None = None  # cap for quick runs
    eval_max_cases: int | None = None       # validation cases per task (None = all)
    # Loss. "full": softmax over the whole catalogue; "sampled": sampled softmax with logQ correction.
    loss: str = "full"
    num_negatives: int = 256
    # Where the sampled softmax draws its negatives (logQ-corrected either way): "popularity" (training
    # counts + 1) or "uniform" over the catalogue.
    sampler: str = "popularity"
    # steer stage: weight of each task in the mix and of the extra terms
    suppression_weight: float = 1.0
    router_weight: float = 0.1
    # warm-up: weight of the item-tag InfoNCE (ours, beyond DPR_SPEC; 0 = the spec's plain warm-up)
    tag_weight: float = 0.0
    promotion_weight: float = 0.0  # ours, beyond DPR_SPEC: -log mass on the requested tag (positive cases)
    # steer: std of Gaussian noise added to prompt embeddings (then renormalised); ours, 0 = off
    prompt_noise: float = 0.0
    # steer: model selection on mean validation NDCG@10 - violation_weight * negative violation@10
    # (ours; 0 = DPR_SPEC's plain mean NDCG@10, which cannot see suppression getting worse)
    violation_weight: float = 0.0
    temperature: float = 0.1      # InfoNCE temperature (align stage; warm-up item-tag term)


def _warmup() -> StageConfig:
    return StageConfig(epochs=30, lr=1e-3, train=["backbone", "item_table"], patience=5)


def _align() -> StageConfig:
    return StageConfig(epochs=20, lr=1e-3, train=["projection"], patience=3, batch_size=64)


def _steer() -> StageConfig:
    return StageConfig(
        epochs=10, lr=1e-3, train=["projection", "experts", "router", "fusion"], patience=3
    )


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    batch_size: int = 256
    rerank_depths: list[int] = field(default_factory=lambda: [50, 200])
    rerank_grid: list[float] | None = None  # None: the baseline's default grid (several decades)
    max_cases: int | None = None  # per task; None = every case


DISTRIBUTED_MODES = ("auto", "distributed", "reference")


@dataclass
class DistributedConfig:
    """How ``launch/train.py`` runs on several processes (dpr_dist/distributed)."""

    # "auto": distributed when a launcher (deepspeed, torchrun) set WORLD_SIZE, else the
    # single-process reference path; "distributed": even alone (a world of one: TorchRec table,
    # DeepSpeed engine); "reference": the reference path (refused under a launcher of several ranks).
    mode: str = "auto"
    sharding: str = "row_wise"            # row_wise | table_wise | column_wise (TorchRec)
    table_optimizer: str = "rowwise_adagrad"  # fused in TorchRec's backward: rowwise_adagrad | sgd
    zero_stage: int = 0                   # DeepSpeed ZeRO stage for the dense modules, 0-3
    # > 1 makes the table (updated at every micro-batch) step more often than the dense part: see
    # dpr_dist/distributed/engine.py; refused unless allow_accumulation is set.
    gradient_accumulation_steps: int = 1
    allow_accumulation: bool = False
    timeout_minutes: float = 5.0          # every collective; a dead rank fails the others this fast

    def __post_init__(self) -> None:
        if self.mode not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed.mode={self.mode!r}; allowed: {', '.join(DISTRIBUTED_MODES)}")


@dataclass
class TrainConfig:
    data_dir: str = "data/ml-100k"
    out_dir: str = "runs/ml-100k"
    seed: int = 0
    device: str = "cpu"           # "cuda" on GPU machines
    threads: int = 0              # torch intra-op threads; 0 = leave torch's default
    checkpoint_every_steps: int = 200  # resumable training state (also at every epoch end); 0 = epoch ends only
    log_every_steps: int = 50     # rank 0: steps.jsonl and TensorBoard
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup: StageConfig = field(default_factory=_warmup)
    align: StageConfig = field(default_factory=_align)
    steer: StageConfig = field(default_factory=_steer)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)
