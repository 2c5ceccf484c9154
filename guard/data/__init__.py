"""Readers for the benchmark data in ``../shared/data`` (never copied into the repo)."""
