"""Turn RawData (original string ids) into a Catalog: dense ids, chronological sequences, tags.

Order of the steps matters and is part of the contract (DPR_SPEC "Task construction"):
missing ids -> duplicate events -> unknown items -> per-user sequences -> drop short users ->
max_users -> catalogue. The catalogue is built last so that items only used by dropped users
disappear and dense item ids stay 1..N without holes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.config import DataConfig
from data_pipeline.records import BadInputError, RawData

DUPLICATE_MODES = ("drop", "keep", "error")
UNKNOWN_ITEM_MODES = ("keep", "drop", "error")
# Leave-one-out needs a training part, a validation target and a test target.
MIN_EVENTS_FLOOR = 3

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class Catalog:
    """Everything task construction needs, with dense ids (0 = padding).

    items: item_id (1..N), original_id, title, tags (list[str]), text; row i-1 = item i.
    tags: tag names sorted by name; a tag's index is its position (ties "by name" = lowest index).
    item_tag_matrix: bool [N+1, T]; row 0 (padding) is all False.
    users: user_id (1..U), original_id; row u-1 = user u.
    sequences: sequences[u] = int32 dense item ids of user u, oldest first; sequences[0] is empty.
    stats: counts of what each step kept and dropped (see :func:`normalise`).
    """

    items: pd.DataFrame
    tags: list[str]
    item_tag_matrix: np.ndarray
    users: pd.DataFrame
    sequences: list[np.ndarray]
    stats: dict[str, int]

    @property
    def num_items(self) -> int:
        return len(self.items)

    def without_item_texts(self) -> "Catalog":
        """The same catalogue with only the ``item_id`` column of ``items``: what case building
        needs, without the per-item strings (GBs of Python objects for a 20M-item catalogue,
        which every Ray worker would otherwise unpickle)."""
        return dataclasses.replace(self, items=self.items[["item_id"]])

    @property
    def num_users(self) -> int:
        return len(self.users)


def sort_original_ids(ids) -> list[str]:
    """Distinct ids sorted numerically when every id is an integer, else as strings.

    Numeric ids that differ only by leading zeros ("7", "007") are ordered by their string.
    """
    unique = pd.unique(pd.Series(ids, dtype=object).astype(str).to_numpy(dtype=object))
    # Fast path (catalogues of tens of millions of ids): canonical decimal integers sort as int64.
    # to_numeric gives int64 only if every id parses as an integer that fits; "007" and "+7" parse
    # too but are not canonical, so they take the general path below.
    as_int = np.asarray(pd.to_numeric(unique, errors="coerce"))
    if len(unique) and as_int.dtype == np.int64:
        if (pd.Series(as_int).astype(str).to_numpy(dtype=object) == unique).all():
            return unique[np.argsort(as_int, kind="stable")].tolist()
    unique = sorted(unique)
    if unique and all(_INTEGER.fullmatch(i) for i in unique):
        unique.sort(key=lambda i: (int(i), i))
    return unique


CATALOGUES = ("interactions", "all_items")


def normalise(raw: RawData, cfg: DataConfig) -> Catalog:
    """Remap ids, apply the bad-input policies of ``cfg`` and build sequences and tag matrix.

    stats: events_in (rows of raw.events), duplicates_dropped, unknown_item_events (events whose
    item is missing from raw.items, whatever the policy), events_kept (events left after the
    duplicate and unknown-item policies), users_dropped_short (< cfg.min_user_events events),
    users_dropped_max_users, users, items, interactions (events in the final sequences),
    items_without_tags (catalogue items with no tag; they never yield a positive case).
    """
    _check_config(cfg)
    if cfg.catalogue not in CATALOGUES:
        raise ValueError(f"catalogue {cfg.catalogue!r}; allowed: {', '.join(CATALOGUES)}")
    where = _source_label(raw)
    events = raw.events.loc[:, ["user", "item", "order", "source_row"]]
    _check_missing(events, where)
    events = events.assign(user=events["user"].astype(str), item=events["item"].astype(str))
    # Positional order of the source decides which copy of a duplicate is "first".
    events = events.sort_values("source_row", kind="stable", ignore_index=True)
    stats = {"events_in": len(events)}

    events, stats["duplicates_dropped"] = _handle_duplicates(events, cfg.duplicate_events, where)
    item_meta = _item_metadata(raw.items, where)
    events, stats["unknown_item_events"] = _handle_unknown_items(
        events, item_meta.index, cfg.unknown_items, where
    )
    stats["events_kept"] = len(events)

    user_order = sort_original_ids(events["user"].unique())
    counts = events["user"].value_counts()
    kept_users = [u for u in user_order if counts[u] >= cfg.min_user_events]
    stats["users_dropped_short"] = len(user_order) - len(kept_users)
    if cfg.max_users is not None:
        stats["users_dropped_max_users"] = max(0, len(kept_users) - cfg.max_users)
        kept_users = kept_users[: cfg.max_users]
    else:
        stats["users_dropped_max_users"] = 0
    user_ids = pd.Series(np.arange(1, len(kept_users) + 1, dtype=np.int64), index=kept_users)
    events = events[events["user"].isin(user_ids.index)]

    # DPR_SPEC: the catalogue is the items that occur; "all_items" (ours) keeps every item of the
    # metadata, never-consumed ones included (cold items; catalogue-scaling benchmarks).
    used = events["item"].unique()
    wanted = np.concatenate([used, item_meta.index.to_numpy(dtype=object)]) if cfg.catalogue == "all_items" else used
    items = _catalogue(wanted, item_meta)
    tags = sorted({t for tag_list in items["tags"] for t in tag_list})
    item_index = pd.Series(items["item_id"].to_numpy(), index=items["original_id"].to_numpy())
    sequences = _sequences(events, user_ids, item_index)

    stats.update(
        users=len(kept_users),
        items=len(items),
        interactions=int(sum(len(s) for s in sequences)),
        items_without_tags=int(sum(1 for t in items["tags"] if not t)),
    )
    users = pd.DataFrame({"user_id": user_ids.to_numpy(), "original_id": list(user_ids.index)})
    return Catalog(items, tags, _tag_matrix(items["tags"], tags), users, sequences, stats)


def _check_config(cfg: DataConfig) -> None:
    if cfg.duplicate_events not in DUPLICATE_MODES:
        raise ValueError(
            f"duplicate_events: {cfg.duplicate_events!r} is not one of {DUPLICATE_MODES}"
        )
    if cfg.unknown_items not in UNKNOWN_ITEM_MODES:
        raise ValueError(f"unknown_items: {cfg.unknown_items!r} is not one of {UNKNOWN_ITEM_MODES}")
    if cfg.min_user_events < MIN_EVENTS_FLOOR:
        raise ValueError(
            f"min_user_events: {cfg.min_user_events} < {MIN_EVENTS_FLOOR}; leave-one-out needs a "
            "training item, a validation target and a test target"
        )
    if cfg.max_users is not None and cfg.max_users < 1:
        raise ValueError(f"max_users: {cfg.max_users} must be >= 1 or null")


def _source_label(raw: RawData) -> str:
    return ", ".join(raw.sources) if raw.sources else "<events>"


def _is_missing(column: pd.Series) -> pd.Series:
    """NaN/None, or an id that is empty after stripping (an empty CSV cell)."""
    text = column.astype(str).str.strip()
    return column.isna() | (text == "")


def _check_missing(events: pd.DataFrame, where: str) -> None:
    """The first event (lowest source_row) with a missing id or order is an error."""
    if events["source_row"].isna().any():
        raise BadInputError(where, None, "an event has no source_row (ingest bug)")
    checks = {"user id": _is_missing(events["user"]), "item id": _is_missing(events["item"]),
              "order": events["order"].isna()}
    bad = np.logical_or.reduce([m.to_numpy() for m in checks.values()])
    if bad.any():
        rows = np.where(bad, events["source_row"].to_numpy(), np.iinfo(np.int64).max)
        first = int(np.argmin(rows))
        what = " and ".join(name for name, m in checks.items() if m.iloc[first])
        row = int(events["source_row"].iloc[first])
        raise BadInputError(where, None, f"source_row {row}: missing {what}")


def _handle_duplicates(events: pd.DataFrame, mode: str, where: str) -> tuple[pd.DataFrame, int]:
    dup = events.duplicated(subset=["user", "item", "order"], keep="first").to_numpy()
    if not dup.any() or mode == "keep":
        return events, 0
    if mode == "error":
        row = events.loc[dup].iloc[0]
        same = events[
            (events["user"] == row["user"]) & (events["item"] == row["item"])
            & (events["order"] == row["order"])
        ]
        raise BadInputError(
            where, None,
            f"source_row {row['source_row']}: duplicate event (user {row['user']!r}, item "
            f"{row['item']!r}, order {row['order']}) first seen at source_row "
            f"{same['source_row'].iloc[0]} (duplicate_events: error)",
        )
    return events.loc[~dup].reset_index(drop=True), int(dup.sum())


def _item_metadata(items: pd.DataFrame, where: str) -> pd.DataFrame:
    """raw.items indexed by original id, with tags de-duplicated and NaN text made empty."""
    meta = items.loc[:, ["item", "title", "tags", "text"]]
    missing = meta["item"].isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise BadInputError(where, None, f"item metadata row {row}: missing item id")
    meta = meta.assign(item=meta["item"].astype(str))
    repeated = meta["item"][meta["item"].duplicated()]
    if len(repeated):
        raise BadInputError(
            where, None, f"item metadata lists item {repeated.iloc[0]!r} more than once"
        )
    meta = meta.assign(
        title=meta["title"].fillna("").astype(str),
        text=meta["text"].fillna("").astype(str),
        tags=[_clean_tags(t) for t in meta["tags"]],
    )
    return meta.set_index("item")


def _clean_tags(tags) -> list[str]:
    """Drop empty names and repeats, keep the source's order."""
    if tags is None or (isinstance(tags, float) and np.isnan(tags)):
        return []
    cleaned = list(dict.fromkeys(str(t) for t in tags if str(t).strip()))
    # Keep the source's list when nothing changed: one list per item, not two (20M-item catalogues).
    return tags if isinstance(tags, list) and cleaned == tags else cleaned


def _handle_unknown_items(
    events: pd.DataFrame, known: pd.Index, mode: str, where: str
) -> tuple[pd.DataFrame, int]:
    # Arrow's hash set: pandas' isin on 20M str ids takes minutes and GBs.
    value_set = pa.array(known.to_numpy(dtype=object), type=pa.string())
    unknown = ~pc.is_in(pa.array(events["item"].to_numpy(dtype=object), type=pa.string()), value_set=value_set).to_numpy(zero_copy_only=False)
    count = int(unknown.sum())
    if count and mode == "error":
        row = events.loc[unknown].iloc[0]
        raise BadInputError(
            where, None,
            f"source_row {row['source_row']}: item {row['item']!r} is not in the item metadata "
            f"({count} such event(s); unknown_items: error)",
        )
    if count and mode == "drop":
        events = events.loc[~unknown].reset_index(drop=True)
    return events, count


def _catalogue(item_originals, meta: pd.DataFrame) -> pd.DataFrame:
    """Items used by the kept events; unknown ones (policy "keep") get empty metadata."""
    originals = sort_original_ids(item_originals)
    rows = meta.reindex(originals)
    unknown = rows["title"].isna().to_numpy()
    # Titles and texts stay pandas strings (Arrow-backed), not one Python object per item.
    titles = rows["title"].fillna("").reset_index(drop=True)
    texts = rows["text"].fillna("").reset_index(drop=True)
    tags = [[] if u else t for u, t in zip(unknown, rows["tags"])]
    return pd.DataFrame({
        "item_id": np.arange(1, len(originals) + 1, dtype=np.int64),
        "original_id": originals,
        "title": titles,
        "tags": tags,
        "text": texts,
    })


def _sequences(
    events: pd.DataFrame, user_ids: pd.Series, item_index: pd.Series
) -> list[np.ndarray]:
    """Per-user dense item ids sorted by (order, source_row): same-time bursts keep file order."""
    frame = pd.DataFrame({
        "u": user_ids.reindex(events["user"]).to_numpy(),
        "i": item_index.reindex(events["item"]).to_numpy().astype(np.int32),
        "order": events["order"].to_numpy(),
        "row": events["source_row"].to_numpy(),
    })
    frame = frame.sort_values(["u", "order", "row"], kind="stable")
    users = frame["u"].to_numpy()
    items = frame["i"].to_numpy()
    bounds = np.searchsorted(users, np.arange(1, len(user_ids) + 2))
    empty = np.zeros(0, dtype=np.int32)
    return [empty] + [items[bounds[u - 1]: bounds[u]] for u in range(1, len(user_ids) + 1)]


def _tag_matrix(item_tags: pd.Series, tags: list[str]) -> np.ndarray:
    lengths = np.fromiter((len(t) for t in item_tags), dtype=np.int64, count=len(item_tags))
    column = {name: j for j, name in enumerate(tags)}
    # A generator, not a flat list: 20M items hold ~50M tag slots.
    codes = np.fromiter((column[t] for tag_list in item_tags for t in tag_list), dtype=np.int32, count=int(lengths.sum()))
    matrix = np.zeros((len(item_tags) + 1, len(tags)), dtype=bool)
    matrix[np.repeat(np.arange(1, len(item_tags) + 1), lengths), codes] = True
    return matrix
