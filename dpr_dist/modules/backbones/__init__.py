"""Backbone registry: adding a backbone is one new file and one line in BACKBONES."""

from __future__ import annotations

from ..config import ModelConfig
from .base import Backbone
from .gru4rec import GRU4Rec
from .sasrec import SASRec

BACKBONES: dict[str, type[Backbone]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
}


def build_backbone(cfg: ModelConfig) -> Backbone:
    try:
        cls = BACKBONES[cfg.backbone]
    except KeyError:
        raise ValueError(
            f"ModelConfig.backbone={cfg.backbone!r} is not registered; known: {', '.join(sorted(BACKBONES))}"
        ) from None
    return cls(cfg)


__all__ = ["BACKBONES", "Backbone", "GRU4Rec", "SASRec", "build_backbone"]
