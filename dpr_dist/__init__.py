"""dpr-dist: training and serving of promptable sequential recommenders (DPR)."""

__version__ = "0.1.0"
