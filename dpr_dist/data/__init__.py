"""Training-side reading of prepared data sets: load the tables, stream the shards in batches."""

from dpr_dist.data.batching import collate_cases, left_pad
from dpr_dist.data.prepared import Prepared, PreparedDataError, load_prepared
from dpr_dist.data.reader import ShardDataset, ShardLoader, shard_loader

__all__ = [
    "Prepared", "PreparedDataError", "ShardDataset", "ShardLoader",
    "collate_cases", "left_pad", "load_prepared", "shard_loader",
]
