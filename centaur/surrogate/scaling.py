"""A scaling law of the reference task, the base the objective's trees are fitted on.

val_bpb of an architecture at good learning rates ~ E + A (N/25M)^-a + B (D/500M)^-b + C (S/950)^-c, with N the
non-embedding parameters, D the tokens and S the optimizer steps a 300 s run gets (features.physical). Trees
extrapolate flat: a region the data cover only with poor learning rates, or not at all, takes the value of the
nearest leaf. Fitted on the residual of this law instead, they extrapolate along it, so a wider model than the
data hold is predicted by how params, tokens and steps trade off in the 300 s budget (docs/surrogate.md,
"Fidelity": it lowered the cross-seed error in both directions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from centaur.surrogate.data import NUMERIC_HPS
from centaur.surrogate.features import frame_columns, physical

# What a run's learning rates and schedule do not change: one cell of the law's data per combination.
ARCH_HPS: tuple[str, ...] = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE",
                             "WINDOW_PATTERN")
# Scales of N, D and S (near the defaults: 25.2M non-embedding parameters, ~500M tokens, ~950 steps).
_SCALES = (2.5e7, 5e8, 950.0)
MIN_CELLS = 20


@dataclass(frozen=True)
class ScalingLaw:
    """E + sum_k K_k u_k^-p_k over u = (N, D, S) / scales; `fit_scaling_law` builds it."""

    e: float
    k: tuple[float, float, float]
    p: tuple[float, float, float]
    n_cells: int

    def predict(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        u = _terms(cols)
        return self.e + (np.asarray(self.k) * u ** -np.asarray(self.p)).sum(axis=1)

    def as_dict(self) -> dict[str, float | int]:
        return {"E": self.e, "A": self.k[0], "B": self.k[1], "C": self.k[2], "a": self.p[0], "b": self.p[1],
                "c": self.p[2], "cells": self.n_cells}


def _terms(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    ph = physical(cols)
    return np.column_stack([ph["params_nonembed"], ph["tokens_300s"], ph["steps_300s"]]) / np.asarray(_SCALES)


def fit_scaling_law(ok: pd.DataFrame, *, top: int = 2, cap: float = 1.1) -> ScalingLaw | None:
    """Fit the law to the successful trials OK: per architecture cell (`ARCH_HPS`), the mean of its `top` best
    values below `cap` (the envelope over learning rates: a cell run with poor learning rates pulls the law
    less than its mean would), by robust least squares (soft L1 at 0.005, so a few odd cells do not bend it).
    None with fewer than `MIN_CELLS` cells: too few to fit seven parameters."""
    s = ok[ok["val_bpb"] < cap].sort_values("val_bpb", kind="stable")
    env = (s.groupby(list(ARCH_HPS), sort=False).head(top).groupby(list(ARCH_HPS), sort=False)
           .agg({"val_bpb": "mean", **{h: "first" for h in NUMERIC_HPS if h not in ARCH_HPS}}).reset_index())
    if len(env) < MIN_CELLS:
        return None
    u, y = _terms(frame_columns(env)), env["val_bpb"].to_numpy()

    def resid(t: np.ndarray) -> np.ndarray:
        return t[0] + (np.exp(t[1:4]) * u ** -np.exp(t[4:7])).sum(axis=1) - y

    # exponents kept within [0.01, 3]: the law must stay a decreasing power law in each term
    lo = np.r_[0.0, np.full(3, -20.0), np.full(3, np.log(0.01))]
    hi = np.r_[2.0, np.full(3, 5.0), np.full(3, np.log(3.0))]
    t0 = np.r_[float(np.median(y)) - 0.1, np.log([0.02, 0.02, 0.01]), np.log([0.3, 0.3, 0.5])]
    t = least_squares(resid, t0, bounds=(lo, hi), loss="soft_l1", f_scale=0.005, max_nfev=5000).x
    k = tuple(float(v) for v in np.exp(t[1:4]))
    p = tuple(float(v) for v in np.exp(t[4:7]))
    return ScalingLaw(e=float(t[0]), k=k, p=p, n_cells=int(len(env)))  # type: ignore[arg-type]
