"""The DPR model: item table, sequential backbones and the prompt-steering path."""

from __future__ import annotations

import torch

from .backbones import BACKBONES, Backbone, build_backbone
from .config import ModelConfig
from .dpr import DPRModel, EncodedHistory, StreamOutput
from .item_table import ItemTable, PlainItemTable
from .routing import NEGATIVE, NO_CLAUSE, POSITIVE, UNLABELLED


def build_model(
    cfg: ModelConfig, num_items: int, seed: int = 0, item_table: ItemTable | None = None, sparse_table: bool = False,
    fixed_columns: torch.Tensor | None = None,
) -> DPRModel:
    """A registry backbone and the steering modules around ``item_table`` (default: a PlainItemTable).

    The table is built first: its rows are seeded on their own (dpr_dist.modules.item_init), and the
    dense modules are then drawn from ``seed`` alone, so every rank and every kind of table starts
    from the same weights. ``fixed_columns`` [N+1, k]: untrained feature columns of the plain table
    (ModelConfig.tag_features)."""
    if item_table is None:
        item_table = PlainItemTable(num_items, cfg.hidden, sparse=sparse_table, seed=seed, fixed_columns=fixed_columns)
    table = item_table
    torch.manual_seed(seed)
    return DPRModel(build_backbone(cfg), table, cfg)


__all__ = [
    "BACKBONES", "Backbone", "DPRModel", "EncodedHistory", "ItemTable", "ModelConfig", "NEGATIVE", "NO_CLAUSE",
    "POSITIVE", "PlainItemTable", "StreamOutput", "UNLABELLED", "build_backbone", "build_model",
]
