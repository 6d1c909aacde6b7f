"""The on-disk contract between the data pipeline (writer) and training / evaluation (readers).

A prepared data set is one directory:

    manifest.json              schema version, config, source checksums, counts, every shard
    items.parquet              item_id (dense, 1..N; 0 is padding), original_id (str), title (str),
                               tags (list<str>), text (str)
    prompts.parquet            prompt_id (0..P-1), text, polarity (+1 / -1), tag (str),
                               template (str, the phrasing with "{tag}"), held_out (bool)
    prompt_embeddings.npy      float32 [P, D], row i = prompt_id i (L2-normalised encoder output)
    item_text_embeddings.npy   float32 [N+1, D], row = item id (row 0 zero): for the text-rerank baseline
    tag_text_embeddings.npy    float32 [T, D], row = tag index (the tag's display name encoded)
    shards/<split>/<kind>-<part>-<index>.tar   webdataset shards (see SHARD_SETS)

Ids: items are dense 1..N in the order of their first appearance after sorting original ids
(numeric when every id is numeric, else as strings), 0 = padding. Tags are referred to by their
index into ``manifest["tags"]`` (sorted by name); -1 means "none".

Every sample of every shard holds ``__key__`` and these fields (raw little-endian arrays, decoded
with ``np.frombuffer``, which reads about 2x faster than pickle/npy decoding):

    hist.i32   int32 [n]       the history that precedes the target, oldest first (unpadded, untruncated)
    case.i64   int64 [len(CASE_FIELDS)]  the case's scalar fields, in CASE_FIELDS order

Warm-up samples (next-item training over a whole training sequence) put the *whole training
sequence* in ``hist.i32`` and set ``target`` to -1: the loss is taken at every position.
Align samples have an empty history, ``target`` -1 and ``pos_prompt``/``pos_tag`` set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpr_dist.common.jsonfile import read_json

SCHEMA_VERSION = 1

PAD_ID = 0
NO_ID = -1  # "no prompt" / "no tag" / "no target" in case fields

# Scalar fields of one case, stored as one int64 array in this order.
CASE_FIELDS: tuple[str, ...] = (
    "user",        # dense user id (1..U)
    "target",      # dense item id of the next item, or -1 for warm-up / align samples
    "pos_prompt",  # prompt_id of the positive clause, or -1
    "neg_prompt",  # prompt_id of the negative clause, or -1
    "pos_tag",     # tag index the positive clause names, or -1
    "neg_tag",     # tag index the negative clause suppresses, or -1
    "held_out",    # 1 if the phrasing(s) are held-out templates never seen in training, else 0
    "shift",       # positive cases: 1 if pos_tag is absent from the recent window, else 0
)
FIELD_INDEX = {name: i for i, name in enumerate(CASE_FIELDS)}

# Task names, also the <kind> part of evaluation shard names.
TASK_STANDARD = "standard"
TASK_POSITIVE = "positive"
TASK_NEGATIVE = "negative"
TASK_COMBINED = "combined"
EVAL_TASKS = (TASK_STANDARD, TASK_POSITIVE, TASK_NEGATIVE, TASK_COMBINED)

# Training stages, also the <kind> part of training shard names.
STAGE_WARMUP = "warmup"
STAGE_ALIGN = "align"
STAGE_STEER = "steer"
TRAIN_STAGES = (STAGE_WARMUP, STAGE_ALIGN, STAGE_STEER)

# (split, kind) pairs a prepared data set contains.
SHARD_SETS: tuple[tuple[str, str], ...] = (
    *(("train", stage) for stage in TRAIN_STAGES),
    *(("valid", task) for task in EVAL_TASKS),
    *(("test", task) for task in EVAL_TASKS),
)

MANIFEST_NAME = "manifest.json"
DATA_CONFIG_NAME = "config.yaml"  # the resolved data config the set was prepared with
ITEMS_NAME = "items.parquet"
PROMPTS_NAME = "prompts.parquet"
PROMPT_EMB_NAME = "prompt_embeddings.npy"
# Baseline inputs (text rerank): the same encoder applied to each item's text (row = item id, row 0
# zero) and to each tag's display name (row = tag index).
ITEM_TEXT_EMB_NAME = "item_text_embeddings.npy"
TAG_TEXT_EMB_NAME = "tag_text_embeddings.npy"
SHARD_DIR = "shards"


def shard_name(split: str, kind: str, part: int, index: int) -> str:
    """Relative path of one shard inside the prepared directory."""
    return f"{SHARD_DIR}/{split}/{kind}-{part:04d}-{index:05d}.tar"


def encode_case(hist, **fields) -> dict[str, bytes]:
    """Serialise one case into webdataset fields (``__key__`` is added by the writer)."""
    unknown = set(fields) - set(CASE_FIELDS)
    if unknown:
        raise KeyError(f"unknown case fields: {sorted(unknown)}")
    values = np.array([int(fields.get(name, NO_ID)) for name in CASE_FIELDS], dtype="<i8")
    return {
        "hist.i32": np.asarray(hist, dtype="<i4").tobytes(),
        "case.i64": values.tobytes(),
    }


def decode_case(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_case`: (history int32 [n], case int64 [len(CASE_FIELDS)])."""
    hist = np.frombuffer(sample["hist.i32"], dtype="<i4")
    case = np.frombuffer(sample["case.i64"], dtype="<i8")
    if case.shape[0] != len(CASE_FIELDS):
        key = sample.get("__key__", "?")
        raise ValueError(
            f"sample {key!r}: case.i64 holds {case.shape[0]} fields, schema v{SCHEMA_VERSION} "
            f"expects {len(CASE_FIELDS)} ({', '.join(CASE_FIELDS)})"
        )
    return hist, case


def read_manifest(root: str | Path, error: type[Exception] = ValueError) -> dict:
    """The manifest of the prepared directory ``root``, of this code's schema version; ``error``
    naming the file when it is missing, unparsable or of another version. The one reader of the
    manifest for the pipeline (reruns, verify) and the trainer alike."""
    path = Path(root) / MANIFEST_NAME
    manifest = read_json(path, error, "missing (the preparation did not finish, or this is not a prepared data set)")
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise error(f"{path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    return manifest
