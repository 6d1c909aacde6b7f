"""Pieces shared by the data pipeline and the trainer: on-disk formats and safe file writing.

Nothing here imports torch or Ray, so the Ray jobs can depend on it without pulling in training code.
"""
