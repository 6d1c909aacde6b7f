"""Recommendations for one person: a history (a known user's, or items given by id or title), an
optional prompt, and the DPR list next to the backbone's, over the whole catalogue.

    rec = Recommender.load("runs/ml-1m/steer", "data/ml-1m-minilm-smollm2-feeling")
    out = rec.recommend(user=42, prompt="comedy, but nothing scary", k=10)
    out.dpr, out.backbone, out.clauses

Ranking is exact top-K in item chunks (:mod:`dpr_dist.eval.ranking`), so memory stays
O(chunk + K) per query even for a 10M-item table; history items are never recommended.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import yaml

from dpr_dist.common.atomic import sha256_file
from dpr_dist.common import schema
from dpr_dist.data.batching import left_pad
from dpr_dist.data.prepared import load_prepared
from dpr_dist.eval.ranking import chunked_top_k, merge_top_k
from dpr_dist.modules import NEGATIVE, POSITIVE, UNLABELLED, DPRModel
from dpr_dist.prompts import Clause, parse_prompt
from dpr_dist.training.checkpoint import CONFIG
from dpr_dist.training.run import load_model

from .catalogue import Catalogue, ItemView, UserHistories
from .errors import RequestError
from .prompt_cache import PromptEmbeddings, encoder_config_from_manifest

MAX_K = 100
MAX_HISTORY = 2_000        # items a request may list (a known user's own history is not capped)
DEFAULT_CACHE_SIZE = 1_024
DEFAULT_CHUNK = 65_536


@dataclass
class ScoredItem:
    rank: int
    item: ItemView
    score: float

    def to_json(self) -> dict:
        return {"rank": self.rank, **self.item.to_json(), "score": self.score}


@dataclass
class ParsedClause:
    text: str
    given: int | None     # +1 / -1 from a structured prompt, None for free text
    p_more: float         # the router's weight on the positive expert group
    polarity: int         # what the clause is taken to mean: the label if given, else the router's call
    tags: list[str]       # tag names the clause mentions (the hard filter uses them for "less")
    cached: bool          # its embedding came from the cache

    def to_json(self) -> dict:
        name = {POSITIVE: "more", NEGATIVE: "less", None: None}
        return {"text": self.text, "given": name[self.given], "routed": "more" if self.p_more >= 0.5 else "less",
                "p_more": round(self.p_more, 4), "polarity": name[self.polarity], "tags": self.tags,
                "cached": self.cached}


@dataclass
class Recommendation:
    user: int | None
    history: list[int]                 # dense ids, oldest first
    clauses: list[ParsedClause]
    dpr: list[ScoredItem]
    backbone: list[ScoredItem]
    filter: bool
    filtered_tags: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def entered(self) -> list[str]:
        """Items in DPR's list but not in the backbone's (what the prompt brought in)."""
        base = {s.item.id for s in self.backbone}
        return [s.item.id for s in self.dpr if s.item.id not in base]

    @property
    def left(self) -> list[str]:
        mine = {s.item.id for s in self.dpr}
        return [s.item.id for s in self.backbone if s.item.id not in mine]

    def to_json(self, catalogue: Catalogue, recent: int = 20) -> dict:
        return {
            "user": self.user,
            "history_length": len(self.history),
            "history_recent": [catalogue.view(i).to_json() for i in self.history[-recent:]],
            "clauses": [c.to_json() for c in self.clauses],
            "filter": self.filter,
            "filtered_tags": self.filtered_tags,
            "dpr": [s.to_json() for s in self.dpr],
            "backbone": [s.to_json() for s in self.backbone],
            "entered": self.entered,
            "left": self.left,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


class Recommender:
    def __init__(
        self,
        model: DPRModel,
        catalogue: Catalogue,
        prompts: PromptEmbeddings,
        users: UserHistories | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        info: dict | None = None,
    ) -> None:
        if catalogue.num_items + 1 != model.item_table.num_rows:
            raise ValueError(f"catalogue has {catalogue.num_items} items, the model's table {model.item_table.num_rows - 1}")
        if prompts.dim != model.cfg.prompt_dim:
            raise ValueError(f"prompt encoder gives {prompts.dim}-d vectors, the model expects {model.cfg.prompt_dim}-d")
        self.model = model.eval()
        # Structured clauses carry their polarity: they are routed by it (hard routing), through a
        # shallow copy that shares every parameter, so no request ever flips the shared model's
        # routing mode under another thread (as a context manager on model.cfg would).
        self._labelled_model = copy.copy(self.model)
        self._labelled_model.cfg = dataclasses.replace(model.cfg, routing="hard")
        self.catalogue = catalogue
        self.prompts = prompts
        self.users = users or UserHistories({})
        self.chunk_size = chunk_size
        self.info = info or {}

    @classmethod
    def load(
        cls, checkpoint_dir: str | Path, data_dir: str | Path | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE, chunk_size: int = DEFAULT_CHUNK,
    ) -> "Recommender":
        """A checkpoint directory (safetensors, no pickle) and the prepared data it was trained on
        (default: the ``data_dir`` in the checkpoint's config.yaml)."""
        data_dir = data_dir if data_dir is not None else checkpoint_data_dir(checkpoint_dir)
        prepared = load_prepared(data_dir)
        model, cfg, metrics = load_model(checkpoint_dir, prepared)
        enc_cfg = encoder_config_from_manifest(prepared.manifest, f"{Path(data_dir) / schema.MANIFEST_NAME}")
        prompts = PromptEmbeddings.from_config(
            enc_cfg, cache_size, prepared.prompts["text"].tolist(), prepared.prompt_embeddings
        )
        data_sha = sha256_file(Path(data_dir) / schema.MANIFEST_NAME)
        info = {
            "checkpoint": str(Path(checkpoint_dir).resolve()),
            "stage": metrics.get("stage"),
            "data_dir": str(Path(data_dir).resolve()),
            "data_name": prepared.manifest.get("name"),
            "data_matches_checkpoint": metrics.get("data_manifest_sha256") in (None, data_sha),
            "encoder": prepared.manifest.get("encoder"),
            "model": {"backbone": cfg.model.backbone, "hidden": cfg.model.hidden, "max_len": cfg.model.max_len,
                      "routing": cfg.model.routing},
            "best_epoch": metrics.get("best_epoch"),
            "best_valid_metric": metrics.get("best_metric"),
        }
        return cls(model, Catalogue(prepared.items, prepared.tag_names, prepared.item_tag), prompts,
                   UserHistories.from_prepared(prepared), chunk_size, info)

    def describe(self) -> dict:
        return {**self.info, "items": self.catalogue.num_items, "users": len(self.users),
                "tags": self.catalogue.tag_names, "max_k": MAX_K, "prompt_cache": self.prompts.cache.stats()}

    # ----------------------------------------------------------------------------------------

    def resolve_history(
        self, user: int | None = None, history: Sequence[str | int] | None = None,
        history_titles: Sequence[str] | None = None,
    ) -> list[int]:
        given = [name for name, v in (("user", user), ("history", history), ("history_titles", history_titles)) if v is not None]
        if len(given) != 1:
            raise RequestError("user", "give exactly one of user, history, history_titles"
                               + (f" (got {', '.join(given)})" if given else ""))
        if user is not None:
            return self.users.history(user).tolist()
        name, entries = given[0], history if history is not None else history_titles
        if not entries:
            raise RequestError(name, "empty: list at least one item")
        if len(entries) > MAX_HISTORY:
            raise RequestError(name, f"{len(entries)} items; the limit is {MAX_HISTORY}")
        if name == "history":
            return [self.catalogue.id_of(v, f"history[{i}]") for i, v in enumerate(entries)]
        return [self.catalogue.id_of_title(v, f"history_titles[{i}]") for i, v in enumerate(entries)]

    def parse(self, prompt: str | Mapping | None) -> list[Clause]:
        try:
            clauses = parse_prompt(prompt)
        except (ValueError, TypeError) as exc:
            raise RequestError("prompt", str(exc)) from None
        if prompt is not None and not clauses:
            raise RequestError("prompt", "empty prompt: give some text, or leave the prompt out (null)")
        if self.model.cfg.routing == "hard" and any(c.polarity is None for c in clauses):
            raise RequestError("prompt", "this model routes by polarity labels (hard routing): "
                               'give a structured prompt {"more": [...], "less": [...]}')
        return clauses

    @torch.inference_mode()
    def recommend(
        self,
        user: int | None = None,
        history: Sequence[str | int] | None = None,
        history_titles: Sequence[str] | None = None,
        prompt: str | Mapping | None = None,
        k: int = 10,
        filter: bool = False,
    ) -> Recommendation:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise RequestError("k", f"must be an integer in [1, {MAX_K}], got {k!r}")
        timings = {}
        start = time.perf_counter()
        seq = self.resolve_history(user, history, history_titles)
        clauses = self.parse(prompt)
        emb, cached = self.prompts.embed([c.text for c in clauses])
        timings["prompt"] = _ms_since(start)

        start = time.perf_counter()
        hist = left_pad([np.asarray(seq, dtype=np.int64)], self.model.cfg.max_len)
        history = self.model.encode_history(hist)
        p_more = [1.0 if c.polarity == POSITIVE else 0.0 for c in clauses]
        u = history.h
        if clauses:
            polarity = torch.tensor([[UNLABELLED if c.polarity is None else c.polarity for c in clauses]])
            labelled = all(c.polarity is not None for c in clauses)
            steering = self._labelled_model if labelled else self.model
            out = steering.steer(history, emb.unsqueeze(0), polarity)
            u = out.u
            # The router's own opinion, also when the labels decided the routing.
            p_more = torch.softmax(out.router_logits[0], dim=-1)[:, 0].tolist()
        parsed = [
            ParsedClause(c.text, c.polarity, float(p), c.polarity if c.polarity is not None else (POSITIVE if p >= 0.5 else NEGATIVE),
                         self.catalogue.tags_named_in(c.text), hit)
            for c, p, hit in zip(clauses, p_more, cached)
        ]
        timings["model"] = _ms_since(start)

        start = time.perf_counter()
        filtered = sorted({t for c in parsed if c.polarity == NEGATIVE for t in c.tags}) if filter else []
        scores, ids = self.top_k(torch.cat([u, history.h]), seq, filtered, k)
        timings["ranking"] = _ms_since(start)
        dpr_list, backbone_list = (self._scored(scores[row], ids[row]) for row in (0, 1))
        return Recommendation(user, seq, parsed, dpr_list, backbone_list, filter, filtered, timings)

    def top_k(self, queries: torch.Tensor, seq: Sequence[int], filtered_tags: Sequence[str], k: int):
        """Row 0 (DPR) excludes the history and items with a filtered tag; row 1 (backbone) the
        history only. Chunk by chunk, so the filter's exclusion list never spans the catalogue."""
        weight = self.model.item_table.weight
        seen = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        if not filtered_tags:
            return chunked_top_k(queries, weight, k, history=seen.expand(queries.shape[0], -1), chunk_size=self.chunk_size)
        parts = []
        for lo in range(0, weight.shape[0], self.chunk_size):
            hi = min(lo + self.chunk_size, weight.shape[0])
            banned = self.catalogue.items_with_tags(filtered_tags, lo, hi)
            excluded = torch.zeros(queries.shape[0], len(seen) + len(banned), dtype=torch.long)  # 0 = padding id
            excluded[:, : len(seen)] = seen
            excluded[0, len(seen):] = banned
            parts.append(chunked_top_k(queries, weight[lo:hi], k, history=excluded, chunk_size=hi - lo, first_id=lo))
        return merge_top_k(parts, k)

    def _scored(self, scores: torch.Tensor, ids: torch.Tensor) -> list[ScoredItem]:
        return [ScoredItem(rank + 1, self.catalogue.view(int(i)), float(s))
                for rank, (s, i) in enumerate(zip(scores.tolist(), ids.tolist())) if i > 0]

    def search(self, query: str, limit: int = 20) -> list[ItemView]:
        return self.catalogue.search(query, limit)


def checkpoint_data_dir(checkpoint_dir: str | Path) -> str:
    path = Path(checkpoint_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not a checkpoint directory?)")
    data_dir = (yaml.safe_load(path.read_text()) or {}).get("data_dir")
    if not data_dir:
        raise ValueError(f"{path}: no data_dir entry; pass the prepared data directory explicitly")
    return data_dir


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
