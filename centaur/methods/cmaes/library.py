"""The one module that reaches past cmaes' public API (CatCMAwM 0.13).

Centaur shows CMA-ES's distribution to an LLM, re-centres CMA-ES's own steps on LLM proposals, restarts
a degenerate optimizer at a given generation and keeps which trials it was told beside it. cmaes has no
public accessors for these, so they live here, and tests/test_architecture.py fails when the library
renames them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from cmaes import CatCMAwM

_TOLD = "_centaur_told"  # our attribute on the pickled optimizer: numbers of the trials it was told

# What is read or written on CatCMAwM objects (checked against the installed cmaes by the tests).
OPTIMIZER_ATTRS = ("_mean", "_A", "_C", "_q", "_sigma", "_g", "_rng")
SOLUTION_ATTRS = ("_v_raw",)


@dataclass(frozen=True)
class Distribution:
    """CMA-ES's current search distribution in the unit box."""

    mean: np.ndarray
    cov: np.ndarray  # what it samples from, without sigma: A C A (A: its margin scaling)
    sigma: float
    categorical: np.ndarray | None  # per categorical parameter, the probability of each choice


def distribution(opt: CatCMAwM) -> Distribution:
    q = getattr(opt, "_q", None)
    categorical = np.array(q) if q is not None else None
    if not hasattr(opt, "_mean"):  # categoricals only: no Gaussian part
        return Distribution(mean=np.zeros(0), cov=np.zeros((0, 0)), sigma=0.0, categorical=categorical)
    a = np.asarray(opt._A, dtype=float)
    return Distribution(
        mean=np.array(opt._mean, dtype=float),
        cov=np.asarray(opt._C, dtype=float) * np.outer(a, a),
        sigma=float(opt._sigma),
        categorical=categorical,
    )


def raw_sample(sol: CatCMAwM.Solution) -> np.ndarray:
    """The solution's unrepaired continuous-and-integer vector, which CMA-ES must be told back."""
    return np.asarray(sol._v_raw, dtype=float)


def reseed(opt: CatCMAwM, seed: int) -> None:
    opt.reseed_rng(seed)


@contextlib.contextmanager
def drawing_with(opt: CatCMAwM, rng: np.random.RandomState) -> Iterator[CatCMAwM]:
    """Draw from `opt` with another random stream, leaving its own stream where it was."""
    saved = opt._rng
    opt._rng = rng
    try:
        yield opt
    finally:
        opt._rng = saved


def set_generation(opt: CatCMAwM, generation: int) -> None:
    """Number a restarted optimizer's generations on from the old one's, so trial tags stay unambiguous."""
    opt._g = generation


def told(opt: CatCMAwM) -> set[int]:
    return set(getattr(opt, _TOLD, set()))


def set_told(opt: CatCMAwM, numbers: set[int]) -> None:
    setattr(opt, _TOLD, set(numbers))
