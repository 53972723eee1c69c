"""Metric sources, one per module, each a context manager whose `.reading` is filled on exit."""
