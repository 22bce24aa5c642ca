"""Benchmarks of zoo's building blocks and models; each runs with `python -m eval.benchmarks.<name>`."""
