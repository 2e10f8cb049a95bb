"""Benchmark harness: one study per (task, method, seed) in one storage, resumable, in parallel processes."""

from centaur.bench.grid import BenchError, Cell, parse_methods, parse_seeds
from centaur.bench.runner import BenchResult, run_bench

__all__ = ["BenchError", "BenchResult", "Cell", "parse_methods", "parse_seeds", "run_bench"]
