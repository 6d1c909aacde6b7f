"""A tiny DPR checkpoint trained by the real pipeline, built once per pytest session.

The serving test modules share it through the session's base temp directory (a fixture imported
into several modules would be built once per module). The steer stage runs longer than
configs/train/tiny.yaml says: with 2 epochs the tiny model's router cannot yet tell "more X" from
"no X", and the browser test needs a reliable direction (seed 0 fixes the outcome).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_OVERRIDES = (
    "align.epochs=6", "align.patience=6",
    "steer.epochs=12", "steer.patience=12", "steer.lr=0.005", "steer.router_weight=1.0",
    "steer.eval_max_cases=50", "warmup.eval_max_cases=50",
)


def trained_checkpoint(tmp_path_factory, data_dir: Path) -> Path:
    """The steer-stage checkpoint directory (trained on first use in this session)."""
    from launch import train

    out = tmp_path_factory.getbasetemp() / "serving-model"
    steer = out / "steer"
    if not (steer / "COMPLETE").exists():
        argv = ["--config", str(REPO / "configs" / "train" / "tiny.yaml"),
                "--set", f"data_dir={data_dir}", "--set", f"out_dir={out}"]
        for override in TRAIN_OVERRIDES:
            argv += ["--set", override]
        assert train.main(argv) == 0
    return steer
