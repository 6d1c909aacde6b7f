"""Helpers for the serving tests: a trained tiny checkpoint, headless Chromium and a small CDP client."""
