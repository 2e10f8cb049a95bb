"""The grid of a benchmark: which (method, seed) studies to run on one task, and their names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from centaur.methods.base import MethodError, available_methods
from centaur.study.schema import BENCH_COMPLETE_ATTR as COMPLETE_ATTR  # noqa: F401  (the bench's names for them)
from centaur.study.schema import BENCH_SECONDS_ATTR as SECONDS_ATTR  # noqa: F401


class BenchError(ValueError):
    """A benchmark cannot run as asked (bad grid, mismatched existing studies); the message says why."""


@dataclass(frozen=True)
class Cell:
    method: str
    seed: int

    def study_name(self, task_name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{task_name}-{self.method}-seed{self.seed}")


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0-9", "0,3,5", "0-2,7" or "4" (ranges inclusive), in order, without repeats."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise BenchError(f"bad seed list {text!r}: use e.g. 0-9, 0,3,5 or 0-2,7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BenchError(f"bad seed range {part!r}: the end is below the start")
        seeds.extend(s for s in range(lo, hi + 1) if s not in seeds)
    return seeds


def parse_methods(text: str) -> list[str]:
    """Method names from "random,tpe,cmaes"; each must be registered (see `centaur methods`)."""
    methods = [m for m in (p.strip() for p in str(text).split(",")) if m]
    if not methods:
        raise BenchError("no methods given: use e.g. --methods random,tpe,cmaes")
    known = available_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise MethodError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(known)}")
    return list(dict.fromkeys(methods))


def grid(methods: list[str], seeds: list[int]) -> list[Cell]:
    """Seed-major order, so that an interrupted bench has whole seeds for every method."""
    return [Cell(m, s) for s in seeds for m in methods]
