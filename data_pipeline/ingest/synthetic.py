"""A synthetic interaction log with known structure, for scale tests and controlled experiments.

- Items 1..N have Zipf popularity (exponent ``popularity_exponent``) over popularity ranks; ranks
  map to ids through a seeded affine permutation, so ids carry no popularity order and nothing of
  size N is held for it. Each item has 1..k distinct tags (1 + Poisson(tags_per_item - 1)), drawn
  with mildly skewed tag weights, as real genres are.
- Each user has 1 or 2 favourite tags (chosen in proportion to the tags' popularity mass). A share
  ``taste_concentration`` of their draws picks a favourite tag and then an item of that tag in
  proportion to its popularity (by rejection from the global Zipf draw); the rest follow global
  popularity. Repeats inside a user are dropped (as in MovieLens, nobody rates a film twice).
- User lengths are ``min_user_len + Geometric - 1`` with mean ``mean_user_len``.

Both tables are written in row groups of ``chunk_rows``: memory is the current chunk plus one
small tag bitmask per item (1-8 bytes), whatever the catalogue size. The output depends only on
the config and the seed (each chunk has its own seeded stream), and the Parquet bytes are identical
for the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.config import SyntheticConfig
from data_pipeline.ingest.frames import events_frame, items_frame, unique_sources
from data_pipeline.records import RawData
from dpr_dist.common.atomic import atomic_path, write_json_atomic

EVENTS_NAME = "events.parquet"
ITEMS_NAME = "items.parquet"
MARKER_NAME = "synthetic.json"
GENERATOR_VERSION = 1
TAG_EXPONENT = 0.7     # tag weights ~ rank^-0.7: the rarest of 20 tags still holds ~2% of tag slots
TAG_BLOCK = 65_536     # items per Gumbel top-k block (bounds the [block, num_tags] key matrix)
MAX_ROUNDS = 10_000    # rejection rounds before giving up (a tag with almost no popularity mass)
_STREAM_META, _STREAM_ITEMS, _STREAM_USERS = 0, 1, 2
_PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)
_EVENT_SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("order", pa.int64())])
_ITEM_SCHEMA = pa.schema(
    [("item", pa.int64()), ("title", pa.string()), ("tags", pa.list_(pa.string())), ("text", pa.string())]
)


def tag_names(num_tags: int) -> list[str]:
    width = len(str(num_tags - 1))
    return [f"tag{i:0{width}d}" for i in range(num_tags)]


def zipf_ranks(rng: np.random.Generator, size: int, n: int, exponent: float) -> np.ndarray:
    """Ranks 1..n with P(r) proportional to the integral of x^-s over [r-0.5, r+0.5] (~ r^-s).

    Inverse-CDF sampling of the continuous power law on [0.5, n+0.5), rounded: O(1) memory in n.
    """
    lo, hi, u = 0.5, n + 0.5, rng.random(size)
    if abs(exponent - 1.0) < 1e-12:
        x = lo * (hi / lo) ** u
    else:
        e = 1.0 - exponent
        x = (lo**e + u * (hi**e - lo**e)) ** (1.0 / e)
    return np.clip(np.floor(x + 0.5), 1, n).astype(np.int64)


@dataclasses.dataclass
class _Catalogue:
    """What user generation needs to know about the items."""

    n: int
    exponent: float
    mult: int                  # rank -> id permutation: id - 1 = ((rank - 1) * mult + shift) mod n
    shift: int
    tag_bits: np.ndarray       # [n] bitmask of each item's tags
    tag_mass: np.ndarray       # [num_tags] popularity mass carried by each tag

    def items_of_ranks(self, ranks: np.ndarray) -> np.ndarray:
        return (((ranks - 1) * self.mult + self.shift) % self.n) + 1

    def ranks_of_items(self, items: np.ndarray) -> np.ndarray:
        inverse = pow(self.mult, -1, self.n) if self.n > 1 else 0
        return (((items - 1 - self.shift) * inverse) % self.n) + 1


def generate(cfg: SyntheticConfig, out_dir: Path, seed: int) -> tuple[Path, Path]:
    """Write ``events.parquet`` (user, item, order) and ``items.parquet`` (item, title, tags, text)."""
    _validate(cfg)
    out_dir = Path(out_dir)
    meta_rng = _rng(seed, _STREAM_META)
    mult, shift = _permutation(meta_rng, cfg.num_items)
    tag_weights = np.arange(1, cfg.num_tags + 1, dtype=np.float64) ** -TAG_EXPONENT
    catalogue = _Catalogue(
        cfg.num_items, cfg.popularity_exponent, mult, shift,
        np.zeros(cfg.num_items, dtype=_bitmask_dtype(cfg.num_tags)), np.zeros(cfg.num_tags),
    )
    items_path = out_dir / ITEMS_NAME
    with atomic_path(items_path) as tmp, pq.ParquetWriter(tmp, _ITEM_SCHEMA, **_PARQUET_OPTIONS) as writer:
        for index, start in enumerate(range(0, cfg.num_items, cfg.chunk_rows)):
            stop = min(start + cfg.chunk_rows, cfg.num_items)
            writer.write_table(_item_chunk(cfg, catalogue, tag_weights, start, stop, _rng(seed, _STREAM_ITEMS, index)))
    events_path = out_dir / EVENTS_NAME
    users_per_chunk = max(1, cfg.chunk_rows // max(cfg.mean_user_len, 1))
    with atomic_path(events_path) as tmp, pq.ParquetWriter(tmp, _EVENT_SCHEMA, **_PARQUET_OPTIONS) as writer:
        for index, start in enumerate(range(0, cfg.num_users, users_per_chunk)):
            stop = min(start + users_per_chunk, cfg.num_users)
            writer.write_table(_user_chunk(cfg, catalogue, start, stop, _rng(seed, _STREAM_USERS, index)))
    return events_path, items_path


def popularity_ranks(num_items: int, seed: int, items: np.ndarray) -> np.ndarray:
    """The Zipf popularity rank (1 = most popular) that :func:`generate` gave each item id."""
    mult, shift = _permutation(_rng(seed, _STREAM_META), num_items)
    empty = np.zeros(0, np.uint8)
    return _Catalogue(num_items, 1.0, mult, shift, empty, empty).ranks_of_items(np.asarray(items, np.int64))


def _validate(cfg: SyntheticConfig) -> None:
    problems = []
    if cfg.num_items < 1 or cfg.num_users < 1:
        problems.append("num_items and num_users must be >= 1")
    if not 1 <= cfg.num_tags <= 64:
        problems.append(f"num_tags must be in 1..64 (one bit each), got {cfg.num_tags}")
    if cfg.min_user_len < 1 or cfg.mean_user_len < cfg.min_user_len:
        problems.append(f"need 1 <= min_user_len <= mean_user_len, got {cfg.min_user_len}, {cfg.mean_user_len}")
    if cfg.min_user_len > cfg.num_items // 2:
        problems.append(f"min_user_len {cfg.min_user_len} needs at least {2 * cfg.min_user_len} items")
    if not 0.0 <= cfg.taste_concentration <= 1.0 or cfg.popularity_exponent <= 0 or cfg.chunk_rows < 1:
        problems.append("need 0 <= taste_concentration <= 1, popularity_exponent > 0, chunk_rows >= 1")
    if problems:
        raise ValueError(f"synthetic config: {'; '.join(problems)}")


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, index])))


def _permutation(rng: np.random.Generator, n: int) -> tuple[int, int]:
    if n == 1:
        return 1, 0
    while True:
        mult = int(rng.integers(n // 3 + 1, n))
        if math.gcd(mult, n) == 1:
            return mult, int(rng.integers(0, n))


def _bitmask_dtype(num_tags: int):
    return next(dt for dt, bits in ((np.uint8, 8), (np.uint16, 16), (np.uint32, 32), (np.uint64, 64)) if num_tags <= bits)


def _item_chunk(cfg, catalogue: _Catalogue, tag_weights, start: int, stop: int, rng) -> pa.Table:
    ids = np.arange(start + 1, stop + 1, dtype=np.int64)
    counts = np.clip(1 + rng.poisson(max(cfg.tags_per_item - 1, 0), size=ids.size), 1, cfg.num_tags)
    flat = np.concatenate(
        [_distinct_tags(rng, tag_weights, counts[b : b + TAG_BLOCK]) for b in range(0, ids.size, TAG_BLOCK)]
    )
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    bits = np.left_shift(np.ones(1, np.uint64), flat.astype(np.uint64))
    catalogue.tag_bits[start:stop] = np.add.reduceat(bits, offsets[:-1]).astype(catalogue.tag_bits.dtype)
    weights = catalogue.ranks_of_items(ids).astype(np.float64) ** -cfg.popularity_exponent
    catalogue.tag_mass += np.bincount(flat, weights=np.repeat(weights, counts), minlength=cfg.num_tags)
    names = pa.array(tag_names(cfg.num_tags)).take(pa.array(flat))
    tags = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), names)
    title = pc.binary_join_element_wise("Item", pc.cast(pa.array(ids), pa.string()), " ")
    text = pc.binary_join_element_wise(title, pc.binary_join(tags, ", "), ". Tags: ")
    return pa.Table.from_arrays([pa.array(ids), title, tags, text], schema=_ITEM_SCHEMA)


def _distinct_tags(rng, tag_weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Gumbel top-k: for each item, ``count`` distinct tags drawn by weight, ascending per item."""
    keys = np.log(tag_weights)[None, :] - np.log(-np.log(rng.random((counts.size, tag_weights.size))))
    ranked = np.argsort(-keys, axis=1, kind="stable")
    chosen = np.where(np.arange(tag_weights.size)[None, :] < counts[:, None], ranked, tag_weights.size)
    chosen.sort(axis=1)
    return chosen[chosen < tag_weights.size]


def _user_chunk(cfg, catalogue: _Catalogue, start: int, stop: int, rng) -> pa.Table:
    n_users = stop - start
    span = cfg.mean_user_len - cfg.min_user_len + 1
    lengths = cfg.min_user_len + rng.geometric(1.0 / span, size=n_users) - 1
    lengths = np.minimum(lengths, max(cfg.num_items // 2, cfg.min_user_len))
    favourites = _favourites(rng, catalogue.tag_mass, n_users)
    owner = np.zeros(0, np.int64)
    items = np.zeros(0, np.int64)
    need = lengths.copy()
    for _ in range(50):
        draw_owner = np.repeat(np.nonzero(need)[0], 2 * need[need > 0] + 4)
        owner = np.concatenate([owner, draw_owner])
        items = np.concatenate([items, _draw(rng, cfg, catalogue, favourites, draw_owner)])
        owner, items, have = _first_unique(owner, items, lengths)
        need = lengths - have
        if not need.any():
            break
    else:
        if (have < cfg.min_user_len).any():
            raise ValueError(f"synthetic: could not draw {cfg.min_user_len} distinct items per user; add items")
    order = np.arange(owner.size) - np.searchsorted(owner, owner)
    return pa.Table.from_arrays([pa.array(owner + start + 1), pa.array(items), pa.array(order)], schema=_EVENT_SCHEMA)


def _favourites(rng, tag_mass: np.ndarray, n_users: int) -> np.ndarray:
    """[n_users, 2] favourite tags; a user with one favourite repeats it in both slots."""
    share = tag_mass / tag_mass.sum()
    present = np.nonzero(share > 0)[0]
    first = rng.choice(present, size=n_users, p=share[present] / share[present].sum())
    second = rng.choice(present, size=n_users, p=share[present] / share[present].sum())
    one = (rng.random(n_users) < 0.5) | (second == first)
    return np.stack([first, np.where(one, first, second)], axis=1)


def _draw(rng, cfg, catalogue: _Catalogue, favourites: np.ndarray, owner: np.ndarray) -> np.ndarray:
    ranks = zipf_ranks(rng, owner.size, catalogue.n, cfg.popularity_exponent)
    items = catalogue.items_of_ranks(ranks)
    taste = rng.random(owner.size) < cfg.taste_concentration
    tags = favourites[owner, rng.integers(0, 2, size=owner.size)]
    pending = np.nonzero(taste)[0]
    pending = pending[(catalogue.tag_bits[items[pending] - 1] >> tags[pending].astype(np.uint64)) & 1 == 0]
    for _ in range(MAX_ROUNDS):
        if pending.size == 0:
            return items
        candidates = catalogue.items_of_ranks(zipf_ranks(rng, pending.size, catalogue.n, cfg.popularity_exponent))
        hit = (catalogue.tag_bits[candidates - 1] >> tags[pending].astype(np.uint64)) & 1 == 1
        items[pending[hit]] = candidates[hit]
        pending = pending[~hit]
    raise RuntimeError("synthetic: tag-conditioned sampling did not converge (a favourite tag has ~no mass)")


def _first_unique(owner: np.ndarray, items: np.ndarray, lengths: np.ndarray):
    """Keep each (user, item) once, in draw order, at most ``lengths[user]`` per user.

    Returns the kept draws sorted by user (draw order inside a user) and the count per user.
    """
    key = owner * (int(items.max(initial=0)) + 1) + items
    _, first = np.unique(key, return_index=True)
    first.sort(kind="stable")
    by_user = first[np.argsort(owner[first], kind="stable")]
    owner, items = owner[by_user], items[by_user]
    rank = np.arange(owner.size) - np.searchsorted(owner, owner)
    keep = rank < lengths[owner]
    owner, items = owner[keep], items[keep]
    return owner, items, np.bincount(owner, minlength=lengths.size)


def config_digest(cfg: SyntheticConfig, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "config": dataclasses.asdict(cfg)}


def ensure_generated(cfg: SyntheticConfig, out_dir: Path, seed: int) -> tuple[Path, Path]:
    """Generate into ``out_dir`` unless a previous run with the same config and seed is there."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER_NAME
    wanted = config_digest(cfg, seed)
    paths = out_dir / EVENTS_NAME, out_dir / ITEMS_NAME
    if marker.is_file() and json.loads(marker.read_text()) == wanted and all(p.is_file() for p in paths):
        return paths
    marker.unlink(missing_ok=True)  # the marker is written last: it vouches for both tables
    paths = generate(cfg, out_dir, seed)
    write_json_atomic(marker, wanted)
    return paths


def default_dir(cache_dir: Path, cfg: SyntheticConfig, seed: int) -> Path:
    digest = hashlib.sha256(json.dumps(config_digest(cfg, seed), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"synthetic-{digest}"


def load(cfg: SyntheticConfig, out_dir: Path, seed: int) -> RawData:
    """Generate into ``out_dir`` if needed, then read both tables back with pyarrow."""
    events_path, items_path = ensure_generated(cfg, out_dir, seed)
    events = pq.read_table(events_path)
    items = pq.read_table(items_path)
    return RawData(
        events=events_frame(events["user"], events["item"], events["order"], pa.array(np.arange(events.num_rows))),
        items=items_frame(
            pc.cast(items["item"], pa.string()), items["title"], items["tags"], "Tags", text=items["text"],
        ),
        sources=unique_sources([events_path, items_path]),
    )
