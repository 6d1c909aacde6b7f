"""Writes small prepared directories (the dpr_dist.common.schema layout) for reader/eval tests.

Independent of data_pipeline on purpose: the readers are tested against the contract, not against
one writer's interpretation of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import webdataset as wds

from dpr_dist.common import schema
from dpr_dist.common.atomic import sha256_file

TAGS = ["action", "comedy", "horror"]
# item id -> tags (ids 1..6)
ITEM_TAGS = {1: ["action"], 2: ["comedy"], 3: ["action", "horror"], 4: [], 5: ["horror"], 6: ["comedy", "action"]}


def write_shard(path: Path, samples: list[tuple[list[int], dict]], key_prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for i, (hist, fields) in enumerate(samples):
            writer.write({"__key__": f"{key_prefix}{i:06d}", **schema.encode_case(hist, **fields)})


def write_prepared(root: Path, shard_sets: dict[tuple[str, str], list[list[tuple[list[int], dict]]]]) -> Path:
    """``shard_sets[(split, kind)]`` = list of shards, each a list of (history, case fields)."""
    root.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({
        "item_id": list(ITEM_TAGS),
        "original_id": [str(100 + i) for i in ITEM_TAGS],
        "title": [f"Movie {i}" for i in ITEM_TAGS],
        "tags": [ITEM_TAGS[i] for i in ITEM_TAGS],
        "text": [f"Movie {i}: {', '.join(ITEM_TAGS[i])}" for i in ITEM_TAGS],
    })
    items.to_parquet(root / schema.ITEMS_NAME)
    prompts = pd.DataFrame({
        "prompt_id": [0, 1, 2, 3],
        "text": ["more action", "no horror", "some comedy please", "without action"],
        "polarity": [1, -1, 1, -1],
        "tag": ["action", "horror", "comedy", "action"],
        "template": ["more {tag}", "no {tag}", "some {tag} please", "without {tag}"],
        "held_out": [False, False, True, True],
    })
    prompts.to_parquet(root / schema.PROMPTS_NAME)
    np.save(root / schema.PROMPT_EMB_NAME, np.eye(4, 8, dtype=np.float32))
    shards = {}
    for (split, kind), parts in shard_sets.items():
        for index, samples in enumerate(parts):
            rel = schema.shard_name(split, kind, 0, index)
            write_shard(root / rel, samples, f"{split}_{kind}_{index}_")
            shards[rel] = {"split": split, "kind": kind, "count": len(samples), "sha256": sha256_file(root / rel)}
    manifest = {"schema_version": schema.SCHEMA_VERSION, "tags": TAGS, "shards": shards}
    (root / schema.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return root


def numbered_cases(count: int, seq_len: int = 4) -> list[tuple[list[int], dict]]:
    """Cases whose user field is 1..count, so a stream's order can be read off the batches."""
    return [([1 + (u + j) % 6 for j in range(1 + u % seq_len)], {"user": u + 1, "target": 1 + u % 6}) for u in range(count)]
