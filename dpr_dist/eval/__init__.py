"""Evaluation: full-ranking metrics (the judge), baselines, reports and plots.

Imports nothing from training code, so a training bug cannot leak into its own assessment.
"""
