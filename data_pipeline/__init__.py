"""Ray jobs that turn raw interaction logs into prepared, sharded data sets.

Imports nothing from the trainer: only the shared formats in ``dpr_dist.common``.
"""
