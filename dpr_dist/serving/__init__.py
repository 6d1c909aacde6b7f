"""Serving a trained DPR checkpoint: the inference library, the HTTP API and the web demo."""

from __future__ import annotations

from .errors import RequestError
from .recommender import Recommendation, Recommender

__all__ = ["Recommendation", "Recommender", "RequestError"]
