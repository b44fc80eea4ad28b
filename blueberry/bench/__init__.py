"""Benchmarks whose figures go into docs/benchmarks.md, each runnable with `python -m`."""
