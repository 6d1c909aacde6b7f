"""DPR task cases from a Catalog: leave-one-out split, steering rules, prompt phrasing choice.

Every case is ``(key, hist, fields)``; ``schema.encode_case(hist, **fields)`` serialises it.
Keys read ``{split}-{kind}-u{user:09d}-{position:05d}`` where ``position`` is the target's index
in the user's sequence (0 for warm-up samples, which cover the whole training part). Steer
samples put their task into the kind ("steer_standard", "steer_positive", ...) because one
position yields up to four samples in the same shard set and keys must be unique; align samples
have no user: ``train-align-p{prompt_id:09d}``.

Determinism: each user draws from its own generators seeded with (cfg.seed, user, stream), one
stream per split, so a user's cases do not depend on how users are partitioned, and the
evaluation phrasings do not change when a training option (e.g. steer_cases_per_user) does.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from data_pipeline.config import DataConfig
from data_pipeline.normalise import Catalog
from data_pipeline.templates import NEGATIVE, POSITIVE
from dpr_dist.common.schema import (
    CASE_FIELDS, NO_ID, SHARD_SETS, STAGE_ALIGN, STAGE_STEER, STAGE_WARMUP,
    TASK_COMBINED, TASK_NEGATIVE, TASK_POSITIVE, TASK_STANDARD,
)

Case = tuple[str, np.ndarray, dict[str, int]]
_STREAMS = {"train": 0, "valid": 1, "test": 2}


def case_key(split: str, kind: str, user: int, position: int) -> str:
    return f"{split}-{kind}-u{user:09d}-{position:05d}"


def case_fields(**values: int) -> dict[str, int]:
    """All CASE_FIELDS with -1 for absent ids and 0 for the held_out / shift flags."""
    fields = {name: NO_ID for name in CASE_FIELDS}
    fields.update(held_out=0, shift=0)
    fields.update({name: int(v) for name, v in values.items()})
    return fields


class PhrasingPicker:
    """Prompt ids by (tag index, polarity, held_out); picks one uniformly with a given RNG."""

    def __init__(self, prompts: pd.DataFrame, tags: list[str]):
        index = {t: k for k, t in enumerate(tags)}
        unknown = sorted(set(prompts["tag"]) - set(index))
        if unknown:
            raise ValueError(f"prompts name tag(s) {unknown} that are not in the catalogue's tags")
        ordered = prompts.sort_values("prompt_id")
        groups = ordered.groupby(
            [ordered["tag"].map(index), ordered["polarity"], ordered["held_out"].astype(bool)]
        )["prompt_id"]
        self._ids = {
            (int(k), int(p), bool(h)): ids.to_numpy(np.int64) for (k, p, h), ids in groups
        }
        self._tags = tags

    def pick(self, rng: np.random.Generator, tag: int, polarity: int, held_out: bool) -> int:
        ids = self._ids.get((tag, polarity, held_out))
        if ids is None:
            kind = "held-out" if held_out else "training"
            raise KeyError(
                f"no {kind} phrasing with polarity {polarity:+d} for tag {self._tags[tag]!r}"
            )
        return int(ids[rng.integers(len(ids))])


def choose_tags(
    seq: np.ndarray, targets: np.ndarray, item_tags: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steering tags for targets ``seq[p]`` with histories ``seq[:p]``, p in ``targets``.

    Returns (pos_tag, shift, neg_tag), one entry per target, -1 where the rule yields no tag:
    - pos_tag: among the target's tags, the least frequent in the recent window (the last
      ``window`` history items); shift = 1 when its window count is 0;
    - neg_tag: the most frequent window tag the target lacks; else the most frequent such tag
      of the whole history; else none.
    Ties go to the lowest tag index, i.e. the first name, since tags are sorted by name
    (argmin/argmax return the first extreme). Counts come from prefix sums of the item-tag
    matrix, so one user costs O(len(seq) * T) whatever the number of targets.
    """
    num_targets, num_tags = len(targets), item_tags.shape[1]
    none = np.full(num_targets, NO_ID, dtype=np.int64)
    if num_tags == 0 or num_targets == 0:
        return none, np.zeros(num_targets, dtype=np.int64), none.copy()
    prefix = np.zeros((len(seq) + 1, num_tags), dtype=np.int32)
    np.cumsum(item_tags[seq], axis=0, dtype=np.int32, out=prefix[1:])
    history = prefix[targets]
    recent = history - prefix[np.maximum(targets - window, 0)]
    has = item_tags[seq[targets]]
    rows = np.arange(num_targets)

    unreachable = np.iinfo(np.int32).max
    pos_tag = np.where(has, recent, unreachable).argmin(axis=1)
    pos_tag = np.where(has.any(axis=1), pos_tag, NO_ID)
    shift = ((pos_tag != NO_ID) & (recent[rows, np.maximum(pos_tag, 0)] == 0)).astype(np.int64)

    # A lacked tag with count 0 is not "in" the window/history: counts of 0 never qualify.
    recent_lacked = np.where(has, 0, recent)
    history_lacked = np.where(has, 0, history)
    neg_tag = np.where(
        recent_lacked.max(axis=1) > 0, recent_lacked.argmax(axis=1),
        np.where(history_lacked.max(axis=1) > 0, history_lacked.argmax(axis=1), NO_ID),
    )
    return pos_tag.astype(np.int64), shift, neg_tag.astype(np.int64)


def build_cases(
    catalog: Catalog, prompts_df: pd.DataFrame, cfg: DataConfig, user_ids: Iterable[int]
) -> dict[tuple[str, str], list[Case]]:
    """Cases of every (split, kind) in SHARD_SETS except ("train", "align") for ``user_ids``.

    Users are processed in ascending id order whatever order ``user_ids`` comes in.
    """
    _check_config(cfg)
    picker = PhrasingPicker(prompts_df, catalog.tags)
    out: dict[tuple[str, str], list[Case]] = {
        pair: [] for pair in SHARD_SETS if pair != ("train", STAGE_ALIGN)
    }
    for user in sorted({int(u) for u in user_ids}):
        if not 1 <= user <= catalog.num_users:
            raise ValueError(f"user id {user} is outside 1..{catalog.num_users}")
        _user_cases(user, catalog, picker, cfg, out)
    return out


def build_align_cases(prompts_df: pd.DataFrame, tags: list[str]) -> list[Case]:
    """One sample per positive *training* prompt: the align stage pulls a prompt about tag g onto
    g's item centroid, which must not happen to a phrasing that excludes g (or to held-out text)."""
    index = {t: k for k, t in enumerate(tags)}
    rows = prompts_df[(prompts_df["polarity"] == POSITIVE) & ~prompts_df["held_out"].astype(bool)]
    empty = np.zeros(0, dtype=np.int32)
    empty.flags.writeable = False
    cases = []
    for prompt_id, tag in zip(rows["prompt_id"], rows["tag"]):
        if tag not in index:
            raise ValueError(f"prompt {prompt_id} names tag {tag!r}, which is not in the catalogue")
        fields = case_fields(pos_prompt=prompt_id, pos_tag=index[tag])
        cases.append((f"train-{STAGE_ALIGN}-p{int(prompt_id):09d}", empty, fields))
    return sorted(cases, key=lambda case: case[0])


def _check_config(cfg: DataConfig) -> None:
    if cfg.recent_window < 1:
        raise ValueError(f"recent_window: {cfg.recent_window} must be >= 1")
    if cfg.steer_cases_per_user < 0:
        raise ValueError(f"steer_cases_per_user: {cfg.steer_cases_per_user} must be >= 0")
    if not 0.0 <= cfg.heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction: {cfg.heldout_fraction} must be within [0, 1]")


def _user_cases(
    user: int, catalog: Catalog, picker: PhrasingPicker, cfg: DataConfig,
    out: dict[tuple[str, str], list[Case]],
) -> None:
    seq = catalog.sequences[user].view()
    seq.flags.writeable = False  # histories are views of it: readers must not change the catalogue
    n = len(seq)
    if n < 3:
        raise ValueError(f"user {user} has {n} events; leave-one-out needs at least 3")
    train_len = n - 2  # positions >= n-2 are validation / test targets: never in training samples
    rngs = {split: np.random.default_rng([cfg.seed, user, s]) for split, s in _STREAMS.items()}

    if train_len >= 2:
        out[("train", STAGE_WARMUP)].append(
            (case_key("train", STAGE_WARMUP, user, 0), seq[:train_len], case_fields(user=user))
        )
    steer = _steer_positions(rngs["train"], train_len, cfg.steer_cases_per_user)
    targets = np.concatenate([steer, [n - 2, n - 1]]).astype(np.int64)
    pos_tag, shift, neg_tag = choose_tags(seq, targets, catalog.item_tag_matrix, cfg.recent_window)

    for i, position in enumerate(targets.tolist()):
        split = "train" if i < len(steer) else ("valid" if position == n - 2 else "test")
        heldout_p = 0.0 if split == "train" else cfg.heldout_fraction
        cases = _target_cases(
            user, seq, position, int(pos_tag[i]), int(shift[i]), int(neg_tag[i]),
            picker, rngs[split], heldout_p,
        )
        for task, hist, fields in cases:
            if split == "train":
                kind, key_kind = STAGE_STEER, f"{STAGE_STEER}_{task}"
            else:
                kind = key_kind = task
            out[(split, kind)].append((case_key(split, key_kind, user, position), hist, fields))


def _steer_positions(rng: np.random.Generator, train_len: int, k: int) -> np.ndarray:
    """Up to k distinct positions t in [1, train_len - 1] (each needs a non-empty history)."""
    available = train_len - 1
    if available <= 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = rng.choice(available, size=min(k, available), replace=False) + 1
    return np.sort(chosen)


def _target_cases(
    user: int, seq: np.ndarray, position: int, pos_tag: int, shift: int, neg_tag: int,
    picker: PhrasingPicker, rng: np.random.Generator, heldout_p: float,
) -> list[tuple[str, np.ndarray, dict[str, int]]]:
    """(task, hist, fields) for the standard case and each prompted case the rules allow.

    With heldout_p > 0 every prompted case draws its own held-out coin; a combined case uses one
    coin for both clauses (held_out describes the whole prompt).
    """
    hist = seq[:position]
    base = {"user": user, "target": int(seq[position])}
    cases = [(TASK_STANDARD, hist, case_fields(**base))]

    def draw_heldout() -> bool:
        return heldout_p > 0.0 and bool(rng.random() < heldout_p)

    if pos_tag != NO_ID:
        held = draw_heldout()
        fields = case_fields(**base, pos_tag=pos_tag, shift=shift, held_out=held,
                             pos_prompt=picker.pick(rng, pos_tag, POSITIVE, held))
        cases.append((TASK_POSITIVE, hist, fields))
    if neg_tag != NO_ID:
        held = draw_heldout()
        fields = case_fields(**base, neg_tag=neg_tag, held_out=held,
                             neg_prompt=picker.pick(rng, neg_tag, NEGATIVE, held))
        cases.append((TASK_NEGATIVE, hist, fields))
    if pos_tag != NO_ID and neg_tag != NO_ID:
        held = draw_heldout()
        fields = case_fields(**base, pos_tag=pos_tag, neg_tag=neg_tag, shift=shift, held_out=held,
                             pos_prompt=picker.pick(rng, pos_tag, POSITIVE, held),
                             neg_prompt=picker.pick(rng, neg_tag, NEGATIVE, held))
        cases.append((TASK_COMBINED, hist, fields))
    return cases
