"""Configuration of one data preparation run (``configs/data/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipeline.templates import Phrasings


@dataclass
class SyntheticConfig:
    num_items: int = 10_000
    num_users: int = 2_000
    num_tags: int = 20
    tags_per_item: int = 2          # mean number of tags per item (at least 1)
    mean_user_len: int = 40
    min_user_len: int = 5
    popularity_exponent: float = 1.1  # Zipf exponent of item popularity
    taste_concentration: float = 0.8  # share of a user's events drawn from their favourite tags
    chunk_rows: int = 1_000_000       # rows written per Parquet row group


@dataclass
class SourceConfig:
    # One of: ml-1m, ml-100k, movielens-csv, ml-1m-sequences, recbole, recbole-wheel, table, synthetic
    format: str = "ml-100k"
    # A file, directory or zip (see data_pipeline/ingest/__init__.py for what each format reads).
    path: str = ""
    # Optional: download the archive from here first (http(s):// or file://), checked against sha256.
    url: str | None = None
    sha256: str | None = None
    # format "table": map our columns (user, item, order, tags, title, text) to the file's columns.
    columns: dict = field(default_factory=dict)
    items_path: str | None = None    # format "table": optional item metadata file (csv or parquet)
    tag_separator: str = "|"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class EncoderConfig:
    # "minilm": the offline all-MiniLM-L6-v2 package (384-d); "smollm2": the offline decoder LLM
    # SmolLM2-135M-Instruct (576-d, ~6x slower); "smollm2-feeling": the same LLM read through a prompt
    # that asks for the viewer's feeling (keeps "sick of X" negative); "hash": a deterministic
    # bag-of-words hashing encoder with no model weights (tiny tests and smoke runs only); "a+b":
    # several, concatenated (see encode.py).
    kind: str = "minilm"
    model_path: str | None = None   # single-kind only: a local model folder; default: the package's
    batch_size: int = 64
    num_actors: int = 2
    cpus_per_actor: float = 0.5     # fractional: two actors with num_cpus=1 deadlock a 2-CPU cluster
    max_prompt_chars: int = 512
    dim: int = 384                  # "hash" only; "minilm" is always 384, "smollm2" 576
    # Also encode every item's text and every tag name (inputs of the text-rerank baseline). Off for
    # huge synthetic catalogues: ~400 texts/s would take hours for 10M items.
    encode_item_texts: bool = True


@dataclass
class DataConfig:
    name: str = "ml-100k"
    source: SourceConfig = field(default_factory=SourceConfig)
    output_dir: str = "data/ml-100k"
    seed: int = 0
    # Bad input handling.
    skip_bad_rows: bool = False       # False: the first malformed row is an error (file, line, text)
    unknown_items: str = "keep"       # event item missing from item metadata: keep (no tags) | drop | error
    duplicate_events: str = "drop"    # identical (user, item, order) rows: drop | keep | error
    min_user_events: int = 3          # users with fewer events cannot be split leave-one-out: dropped
    # Task construction (DPR_SPEC "Task construction").
    recent_window: int = 20
    steer_cases_per_user: int = 8     # training positions sampled per user for the steer stage
    heldout_fraction: float = 0.5     # share of evaluation prompts phrased with held-out templates
    phrasings: Phrasings = field(default_factory=Phrasings)  # templates; default: DEFAULT_PHRASINGS
    max_users: int | None = None      # keep only the first N users (by dense id): small runs
    catalogue: str = "interactions"   # items that occur (DPR_SPEC) | all_items: every item of the metadata (ours)
    # Sharding.
    samples_per_shard: int = 2_000
    num_partitions: int = 4           # users are split into this many partitions, one Ray task each
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
