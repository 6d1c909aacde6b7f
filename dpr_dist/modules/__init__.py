"""The DPR model: item table, sequential backbones and the prompt-steering path."""

from __future__ import annotations

from .backbones import BACKBONES, Backbone, build_backbone
from .config import ModelConfig
from .dpr import DPRModel, StreamOutput
from .item_table import ItemTable, PlainItemTable
from .routing import NEGATIVE, NO_CLAUSE, POSITIVE, UNLABELLED


def build_model(cfg: ModelConfig, num_items: int, sparse_table: bool = False) -> DPRModel:
    """The single-process reference model: registry backbone + PlainItemTable."""
    return DPRModel(build_backbone(cfg), PlainItemTable(num_items, cfg.hidden, sparse=sparse_table), cfg)


__all__ = [
    "BACKBONES", "Backbone", "DPRModel", "ItemTable", "ModelConfig", "NEGATIVE", "NO_CLAUSE",
    "POSITIVE", "PlainItemTable", "StreamOutput", "UNLABELLED", "build_backbone", "build_model",
]
