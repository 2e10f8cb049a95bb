"""A scaling law of the reference task, the base the objective's trees are fitted on.

val_bpb of an architecture at good learning rates ~ E + A (N/25M)^-a + B (D/500M)^-b + C (S/950)^-c, with N the
non-embedding parameters, D the tokens and S the optimizer steps a 300 s run gets (features.physical). Trees
extrapolate flat: a region the data cover only with poor learning rates, or not at all, takes the value of the
nearest leaf. Fitted on the residual of this law instead, they extrapolate along it, so a wider model than the
data hold is predicted by how params, tokens and steps trade off in the 300 s budget (docs/surrogate.md,
"Fidelity": it lowered the cross-seed error in both directions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


# -- the law with a learning-rate ridge (FitOptions.lr_ridge, off by default) --------------------------------

# The HPs of the ridge's quadratic form: the four learning rates (log10) and two schedule / regularization HPs on
# their own scale (what trades off against a learning rate: a longer warm-down, AdamW's decay ~ lr x wd).
RIDGE_LOG_HPS: tuple[str, ...] = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")
RIDGE_LINEAR_HPS: tuple[str, ...] = ("WARMDOWN_RATIO", "WEIGHT_DECAY")
_RIDGE_START = (0.6, 0.004, 0.04, 0.5, 0.5, 0.2)  # the optimum's start: near the reference defaults


def _ridge_x(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([np.log10(cols[h]) for h in RIDGE_LOG_HPS] + [cols[h] for h in RIDGE_LINEAR_HPS])


def _ridge_z(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """What the optimum moves with: 1, log2 width / 512, log2 total batch / 2^19, log10 steps / 950."""
    ph = physical(cols)
    return np.column_stack([np.ones(len(ph["model_dim"])), np.log2(ph["model_dim"] / 512.0),
                            np.log2(cols["TOTAL_BATCH_SIZE"] / 2**19), np.log10(ph["steps_300s"] / 950.0)])


def _ridge_value(t: np.ndarray, u: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
    k, nz = x.shape[1], z.shape[1]
    nq = k * (k + 1) // 2
    lower = np.zeros((k, k))
    lower[np.tril_indices(k)] = t[7:7 + nq]
    dev = x - z @ t[7 + nq:7 + nq + k * nz].reshape(k, nz).T
    return t[0] + (np.exp(t[1:4]) * u ** -np.exp(t[4:7])).sum(axis=1) + ((dev @ lower) ** 2).sum(axis=1)


@dataclass(frozen=True)
class RidgeLaw:
    """The scaling law plus one learning-rate penalty shared by every architecture cell:
    E + A (N/25M)^-a + B (D/500M)^-b + C (S/950)^-c + (x - B z)' L L' (x - B z), with x the log10 learning rates,
    the warm-down ratio and the weight decay, z = (1, log2 width, log2 total batch, log10 steps) and L lower
    triangular. A full quadratic form can hold a ridge (learning rates traded against each other and the
    schedule) where a round optimum per group cannot; `fit_ridge_law` builds it (docs/surrogate.md, "What was
    tried for extrapolation")."""

    theta: tuple[float, ...]
    n_trials: int

    def predict(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        return _ridge_value(np.asarray(self.theta), _terms(cols), _ridge_z(cols), _ridge_x(cols))

    def form(self) -> np.ndarray:
        """The quadratic form's matrix L L' over `RIDGE_LOG_HPS + RIDGE_LINEAR_HPS`."""
        k = len(RIDGE_LOG_HPS) + len(RIDGE_LINEAR_HPS)
        lower = np.zeros((k, k))
        lower[np.tril_indices(k)] = self.theta[7:7 + k * (k + 1) // 2]
        return lower @ lower.T

    def as_dict(self) -> dict[str, Any]:
        t = self.theta
        return {"E": t[0], "A": math.exp(t[1]), "B": math.exp(t[2]), "C": math.exp(t[3]), "a": math.exp(t[4]),
                "b": math.exp(t[5]), "c": math.exp(t[6]), "form_eigenvalues": np.linalg.eigvalsh(self.form()).tolist(),
                "trials": self.n_trials}


def fit_ridge_law(ok: pd.DataFrame, *, competitive_weight: float = 1.0, weight_below: float = 1.0,
                  cap: float = 1.1) -> RidgeLaw | None:
    """Fit `RidgeLaw` jointly to every successful trial of OK below `cap` (not to an envelope: the penalty explains
    a cell run only with poor learning rates by how far they sit from the optimum the other cells place there),
    by robust least squares (soft L1 at 0.005) with the objective's loss weights, from `fit_scaling_law`'s fit.
    None where that law cannot be fitted."""
    law = fit_scaling_law(ok, cap=cap)
    if law is None:
        return None
    s = ok[ok["val_bpb"] < cap]
    y = s["val_bpb"].to_numpy()
    sw = np.sqrt(np.where(y < weight_below, competitive_weight, 1.0))
    cols = frame_columns(s)
    u, z, x = _terms(cols), _ridge_z(cols), _ridge_x(cols)
    k, nz = x.shape[1], z.shape[1]
    nq = k * (k + 1) // 2
    b0 = np.zeros((k, nz))
    b0[:, 0] = [math.log10(v) for v in _RIDGE_START[:len(RIDGE_LOG_HPS)]] + list(_RIDGE_START[len(RIDGE_LOG_HPS):])
    t0 = np.r_[law.e - 0.01, np.log(law.k), np.log(law.p), np.eye(k)[np.tril_indices(k)] * 0.1, b0.ravel()]
    lo = np.r_[0.0, np.full(3, -20.0), np.full(3, math.log(0.01)), np.full(nq, -5.0), np.full(k * nz, -5.0)]
    hi = np.r_[2.0, np.full(3, 5.0), np.full(3, math.log(3.0)), np.full(nq, 5.0), np.full(k * nz, 5.0)]
    t0 = np.clip(t0, lo + 1e-9, hi - 1e-9)
    t = least_squares(lambda th: (_ridge_value(th, u, z, x) - y) * sw, t0, bounds=(lo, hi), loss="soft_l1",
                      f_scale=0.005, max_nfev=3000).x
    return RidgeLaw(theta=tuple(float(v) for v in t), n_trials=int(len(s)))
