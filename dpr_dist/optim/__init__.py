"""Optimizers specific to dpr-dist."""

from __future__ import annotations

from .rowwise_adagrad import RowWiseAdagrad

__all__ = ["RowWiseAdagrad"]
