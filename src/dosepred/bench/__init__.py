"""Benchmarks behind `dosepred bench` (each a ``run(...) -> dict`` plus a CLI command)."""
