"""Benchmarks of the pipeline: they print figures (JSON) and assert nothing."""
