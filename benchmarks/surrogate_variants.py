"""Cross-seed screening of variants of the surrogate's objective model (issue 27, item 2).

Each variant is fitted on one seed of the reference study and scored on the other seed's novel
configurations (both directions), per held-out run and pooled: competitive-region (val_bpb < 0.99) Spearman,
RMSE and bias (predicted - true), overall Spearman, and feasibility accuracy (the default classifier, which no
variant changes). The variants change only the objective regressors, so the default model's other parts are
fitted once per direction.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/surrogate_variants.py \
        --trials ../shared/data/paper_trials_seeds01.json [--only base,mono] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from centaur.surrogate.data import CODE_METHOD, DEFAULT_CONFIG, NUMERIC_HPS, load_trials
from centaur.surrogate.features import FEATURE_NAMES, feature_matrix, frame_columns, normalized_hps, physical
from centaur.surrogate.model import FitOptions, fit_surrogate, objective_weights, prepare_training_frame
from centaur.surrogate.scaling import ARCH_HPS, fit_scaling_law
from centaur.surrogate.validate import BIAS_MIN_N, _key, max_abs_bias, novel_metrics

LRS = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")
LAW_TOP = [2]  # --top: best trials per architecture cell in the scaling law's envelope


# -- extra features ---------------------------------------------------------------------------------------


def compute_features(c: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """What a 300 s run gets and how its learning rates move with it: warm-down steps, LR x steps for every
    group, and the LRs scaled by sqrt(batch) (Adam's noise scale) and by width (muP's 1/d for Adam groups)."""
    ph = physical(c)
    steps = ph["steps_300s"]
    d = ph["model_dim"]
    tbs = c["TOTAL_BATCH_SIZE"]
    names, cols = [], []
    names.append("log10_warmdown_steps")
    cols.append(np.log10(np.maximum(c["WARMDOWN_RATIO"] * steps, 1.0)))
    for lr in LRS:
        names += [f"log10_{lr}_x_steps", f"log10_{lr}_per_sqrt_batch", f"log10_{lr}_x_width"]
        cols += [np.log10(c[lr] * steps), np.log10(c[lr]) - 0.5 * np.log10(tbs), np.log10(c[lr] * d / 768.0)]
    return names, np.column_stack(cols)


# -- a parametric model of the learning rates' optimum per architecture --------------------------------


def _lr_x(c: dict[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([np.log10(c[lr]) for lr in LRS])


def _arch_z(c: dict[str, np.ndarray]) -> np.ndarray:
    """What the LR optimum may move with: width, total batch, steps in the budget (centred near the defaults)."""
    ph = physical(c)
    return np.column_stack([np.ones(len(ph["model_dim"])), np.log2(ph["model_dim"] / 512.0),
                            np.log2(c["TOTAL_BATCH_SIZE"] / 2**19), np.log10(ph["steps_300s"] / 950.0)])


def _arch_h(c: dict[str, np.ndarray]) -> np.ndarray:
    """The architecture's value at its best learning rates: quadratic in log params, log tokens and steps."""
    ph = physical(c)
    u = np.column_stack([np.log10(ph["params_nonembed"] / 2.5e7), np.log10(ph["tokens_300s"] / 5e8),
                         np.log10(ph["steps_300s"] / 950.0)])
    quad = np.column_stack([u[:, i] * u[:, j] for i in range(3) for j in range(i, 3)])
    return np.column_stack([np.ones(len(u)), u, quad])


@dataclass
class LROptimum:
    """val_bpb ~ h(arch) + sum_k a_k (log10 lr_k - z . b_k)^2, a_k >= 0, fitted robustly (soft L1) on the
    successful trials below `cap`: a region run only with bad learning rates is explained by the distance of its
    learning rates to the optimum the other architectures place there, not by the region."""

    cap: float = 1.1
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def _split(self, theta: np.ndarray, nh: int, nz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = len(LRS)
        return theta[:nh], np.exp(theta[nh:nh + k]), theta[nh + k:].reshape(k, nz)

    def _predict(self, theta: np.ndarray, h: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        ch, a, b = self._split(theta, h.shape[1], z.shape[1])
        opt = z @ b.T  # (n, k)
        return h @ ch + ((x - opt) ** 2 * a).sum(axis=1)

    def fit(self, c: dict[str, np.ndarray], y: np.ndarray) -> LROptimum:
        keep = y < self.cap
        cc = {k: v[keep] for k, v in c.items()}
        h, z, x = _arch_h(cc), _arch_z(cc), _lr_x(cc)
        k = len(LRS)
        b0 = np.zeros((k, z.shape[1]))
        b0[:, 0] = np.log10([0.6, 0.004, 0.04, 0.5])  # the defaults as a start
        theta0 = np.concatenate([np.r_[np.median(y[keep]), np.zeros(h.shape[1] - 1)], np.log(np.full(k, 0.01)),
                                 b0.ravel()])
        res = least_squares(lambda t: self._predict(t, h, z, x) - y[keep], theta0, loss="soft_l1", f_scale=0.005,
                            max_nfev=2000)
        self.theta = res.x
        return self

    def predict(self, c: dict[str, np.ndarray]) -> np.ndarray:
        return self._predict(self.theta, _arch_h(c), _arch_z(c), _lr_x(c))

    def deviations(self, c: dict[str, np.ndarray]) -> np.ndarray:
        """Each learning rate's log10 distance to the fitted optimum of its architecture."""
        z = _arch_z(c)
        _, _, b = self._split(self.theta, _arch_h(c).shape[1], z.shape[1])
        return _lr_x(c) - z @ b.T


@dataclass
class ThroughputLaw:
    """`centaur.surrogate.scaling`'s law with the throughput fitted too: tokens and steps scaled by
    (width/768)^g (bigger matmuls run at a higher share of peak) and, with `batch`, by (DEVICE_BATCH_SIZE/128)^h,
    g and h fitted with the law on the same envelope (the features assume a constant achieved FLOP/s)."""

    batch: bool = False
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def _predict(self, t: np.ndarray, c: dict[str, np.ndarray]) -> np.ndarray:
        ph = physical(c)
        mfu = (ph["model_dim"] / 768.0) ** t[7] * ((c["DEVICE_BATCH_SIZE"] / 128.0) ** t[8] if self.batch else 1.0)
        u = np.column_stack([ph["params_nonembed"] / 2.5e7, ph["tokens_300s"] * mfu / 5e8,
                             ph["steps_300s"] * mfu / 950.0])
        return t[0] + (np.exp(t[1:4]) * u ** -np.exp(t[4:7])).sum(axis=1)

    def fit(self, ok: pd.DataFrame) -> ThroughputLaw:
        s = ok[ok["val_bpb"] < 1.1].sort_values("val_bpb", kind="stable")
        arch = list(ARCH_HPS)
        env = (s.groupby(arch, sort=False).head(2).groupby(arch, sort=False)
               .agg({"val_bpb": "mean", **{h: "first" for h in NUMERIC_HPS if h not in arch}}).reset_index())
        c, y = frame_columns(env), env["val_bpb"].to_numpy()
        lo = np.r_[0.0, np.full(3, -20.0), np.full(3, np.log(0.01)), -1.0, -1.0]
        hi = np.r_[2.0, np.full(3, 5.0), np.full(3, np.log(3.0)), 1.0, 1.0]
        t0 = np.r_[float(np.median(y)) - 0.1, np.log([0.02, 0.02, 0.01]), np.log([0.3, 0.3, 0.5]), 0.0, 0.0]
        self.theta = least_squares(lambda t: self._predict(t, c) - y, t0, bounds=(lo, hi), loss="soft_l1",
                                   f_scale=0.005, max_nfev=5000).x
        return self

    def predict(self, c: dict[str, np.ndarray]) -> np.ndarray:
        return self._predict(self.theta, c)


@dataclass
class LawBowl:
    """Variant (a): `centaur.surrogate.scaling`'s law for the architecture at its best learning rates plus one
    learning-rate penalty shared by every cell: val_bpb ~ E + A (N/25M)^-a + B (D/500M)^-b + C (S/950)^-c
    + sum_k q_k (log10 lr_k - z . b_k)^2 over the four LR groups, q_k >= 0, the optimum z . b_k moving with width,
    total batch and steps (`_arch_z`). Fitted jointly, robustly (soft L1 at 0.005), with the objective's loss
    weights, on every successful trial below `cap` (not on an envelope): a cell run only with poor learning rates
    is then explained by how far its learning rates sit from the optimum the other cells place there."""

    cap: float = 1.1
    # full: the bowl is a full quadratic form (x - opt)' L L' (x - opt) over the four log LRs and the warm-down
    # ratio, so it can hold a ridge (learning rates traded against each other and the schedule), not only a
    # round optimum per group
    full: bool = False
    linear: tuple[str, ...] = ("WARMDOWN_RATIO",)  # HPs in the full form besides the log LRs (on their own scale)
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def _k(self) -> int:
        return len(LRS) + (len(self.linear) if self.full else 0)

    def _predict(self, t: np.ndarray, u: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        k = self._k()
        law = t[0] + (np.exp(t[1:4]) * u ** -np.exp(t[4:7])).sum(axis=1)
        nq = k * (k + 1) // 2 if self.full else k
        q, b = t[7:7 + nq], t[7 + nq:].reshape(k, z.shape[1])
        dev = x - z @ b.T
        if not self.full:
            return law + (dev ** 2 * np.exp(q)).sum(axis=1)
        lower = np.zeros((k, k))
        lower[np.tril_indices(k)] = q
        return law + ((dev @ lower) ** 2).sum(axis=1)

    def _inputs(self, c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ph = physical(c)
        u = np.column_stack([ph["params_nonembed"] / 2.5e7, ph["tokens_300s"] / 5e8, ph["steps_300s"] / 950.0])
        x = _lr_x(c)
        if self.full:
            x = np.column_stack([x, *(c[h] for h in self.linear)])
        return u, _arch_z(c), x

    def fit(self, ok: pd.DataFrame, opts: FitOptions) -> LawBowl:
        law = fit_scaling_law(ok)
        keep = ok["val_bpb"].to_numpy() < self.cap
        s = ok[keep]
        y = s["val_bpb"].to_numpy()
        w = objective_weights(y, opts)
        sw = np.sqrt(w) if w is not None else np.ones(len(y))
        u, z, x = self._inputs(frame_columns(s))
        k = self._k()
        b0 = np.zeros((k, z.shape[1]))
        b0[:len(LRS), 0] = np.log10([0.6, 0.004, 0.04, 0.5])  # the defaults as a start
        if self.full:
            b0[len(LRS):, 0] = [float(DEFAULT_CONFIG[h]) for h in self.linear]
            q0 = np.eye(k)[np.tril_indices(k)] * 0.1
            qlo, qhi = np.full(len(q0), -5.0), np.full(len(q0), 5.0)
        else:
            q0, qlo, qhi = np.log(np.full(k, 0.01)), np.full(k, -20.0), np.full(k, 3.0)
        assert law is not None
        t0 = np.r_[law.e - 0.01, np.log(law.k), np.log(law.p), q0, b0.ravel()]
        lo = np.r_[0.0, np.full(3, -20.0), np.full(3, np.log(0.01)), qlo, np.full(b0.size, -5.0)]
        hi = np.r_[2.0, np.full(3, 5.0), np.full(3, np.log(3.0)), qhi, np.full(b0.size, 5.0)]
        t0 = np.clip(t0, lo + 1e-9, hi - 1e-9)
        self.theta = least_squares(lambda t: (self._predict(t, u, z, x) - y) * sw, t0, bounds=(lo, hi),
                                   loss="soft_l1", f_scale=0.005, max_nfev=3000).x
        return self

    def predict(self, c: dict[str, np.ndarray]) -> np.ndarray:
        return self._predict(self.theta, *self._inputs(c))


def _gp_inputs(c: dict[str, np.ndarray]) -> np.ndarray:
    """The 14 HPs in [0, 1] (log scale where the space is; the window pattern one-hot) and the law's three terms
    (log10 params, tokens and steps, scaled to about [0, 1] over the space)."""
    ph = physical(c)
    law = np.column_stack([(np.log10(ph["params_nonembed"]) - 6.0) / 3.0, (np.log10(ph["tokens_300s"]) - 8.0) / 2.0,
                           (np.log10(ph["steps_300s"]) - 1.5) / 2.5])
    return np.column_stack([normalized_hps(c), law])


GP_CLIP = 1.2  # val_bpb above this is clipped before the GP (near-divergent runs are not Gaussian)
GP_SUBSAMPLE = 700  # trials the kernel's hyperparameters are fitted on (then the GP is conditioned on all)


def fit_gp(c: dict[str, np.ndarray], r: np.ndarray, w: np.ndarray | None, seed: int, by_weight: bool = False
           ) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Variant (b): a GP on the residual R of a parametric base, instead of trees: ARD Matern 5/2 (one length
    scale per input) + white noise, hyperparameters by marginal likelihood on a random subsample, then
    conditioned on all trials with noise variance sigma^2 * mean(w) / w (the objective's loss weights as
    inverse noise). Far from the data it reverts to the mean residual, i.e. to the base, not to a leaf."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    x = _gp_inputs(c)
    rng = np.random.default_rng(seed)
    prob = w / w.sum() if by_weight and w is not None else None
    sub = rng.choice(len(r), size=min(GP_SUBSAMPLE, len(r)), replace=False, p=prob)
    mu, sd = float(r.mean()), float(r.std())
    kern = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(x.shape[1]), (1e-2, 1e2), nu=2.5)
            + WhiteKernel(0.1, (1e-5, 1.0)))
    hp = GaussianProcessRegressor(kern, normalize_y=False, random_state=seed).fit(x[sub], (r[sub] - mu) / sd)
    k = hp.kernel_
    noise = k.k2.noise_level
    ww = w if w is not None else np.ones(len(r))
    gp = GaussianProcessRegressor(k.k1, alpha=noise * ww.mean() / ww, optimizer=None, normalize_y=False)
    gp.fit(x, (r - mu) / sd)
    return lambda cc: mu + sd * gp.predict(_gp_inputs(cc))


# -- variants ----------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    extra: Callable[[dict[str, np.ndarray]], tuple[list[str], np.ndarray]] | None = None
    monotone: dict[str, int] = field(default_factory=dict)  # feature name -> +1 / -1
    lr_optimum: str = ""  # "", "features" (deviations as features), "base" (trees on its residual), "both"
    interaction: str = ""  # "", "strict" or "scaled": LightGBM interaction constraints (see `interaction_groups`)
    scaling_law: bool = False  # trees on the residual of centaur.surrogate.scaling's law (init_score)
    throughput: str = ""  # "", "width" or "width+batch": trees on `ThroughputLaw`'s residual instead
    bowl: str = ""  # "", "diag", "full" or "full-wd": trees (or the GP) on `LawBowl`'s residual instead of the law's
    regressor: str = "trees"  # "trees" (LightGBM ensemble) or "gp" (`fit_gp`) on the base's residual
    bowl_cap: float = 1.1  # LawBowl: fitted on the successful trials below this
    average: tuple[str, ...] = ()  # the mean of these variants' predictions (structural model averaging)
    seed_offset: int = 0  # added to the member seeds (a control: the same model with other members)
    options: dict[str, Any] = field(default_factory=dict)  # the package's own fit with these FitOptions overrides
    note: str = ""


# The learning rates and the schedule, and what the optimum moves with: trees that split on these may not split
# on the architecture except through `LR_SCALES`, so a region run only with bad learning rates is explained by
# its learning rates (whose effect is learned where they vary) and not by the region.
LR_GROUP = ("log10_EMBEDDING_LR", "log10_UNEMBEDDING_LR", "log10_MATRIX_LR", "log10_SCALAR_LR", "WEIGHT_DECAY",
            "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "log10_adam_scale_embedding_lr",
            "log10_adam_scale_unembedding_lr", "mean_lr_mult", "log10_matrix_lr_x_steps")
LR_SCALES = ("log2_model_dim", "log2_TOTAL_BATCH_SIZE", "log10_steps_300s")


def interaction_groups(names: list[str], kind: str) -> list[list[int]]:
    """Two groups of feature indices: the architecture and budget (everything that is not a learning rate or
    schedule feature), and the learning rates with the schedule (with `kind` "scaled", also the width, the
    total batch and the steps, which the optimum moves with; "strict": the LR features alone)."""
    lr = [i for i, n in enumerate(names) if n in LR_GROUP or n.startswith(("dev_", "log10_warmdown"))
          or "_LR_" in n]
    arch = [i for i in range(len(names)) if i not in lr]
    if kind == "scaled":
        lr = lr + [names.index(n) for n in LR_SCALES]
    return [arch, lr]


# Known physics, each with the sign of its effect on val_bpb with everything else fixed: more tokens seen in
# the budget and more tokens per parameter never hurt a fixed model; more memory has no effect on the loss.
MONO_TOKENS = {"log10_tokens_300s": -1, "log10_tokens_per_param": -1}

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("base", note="today's objective (FitOptions defaults)"),
    Variant("compute", extra=compute_features, note="+ warm-down steps, LR x steps, LR / sqrt(batch), LR x width"),
    Variant("mono", monotone=MONO_TOKENS, note="monotone decreasing in tokens seen and tokens per parameter"),
    Variant("lropt-feat", lr_optimum="features", note="+ each LR's distance to its architecture's fitted optimum"),
    Variant("lropt-base", lr_optimum="base", note="trees on the residual of the parametric LR-optimum model"),
    Variant("lropt-both", lr_optimum="both", note="lropt-base + the distances as features"),
    Variant("lropt-both-mono", lr_optimum="both", monotone=MONO_TOKENS, note="lropt-both + mono"),
    Variant("law", scaling_law=True, note="trees on the residual of a scaling law in params, tokens and steps"),
    Variant("law-mfu", throughput="width", note="law with tokens and steps x (width/768)^g, g fitted"),
    Variant("law-mfu-batch", throughput="width+batch", note="law-mfu and x (DEVICE_BATCH_SIZE/128)^h"),
    Variant("law-ic", scaling_law=True, interaction="scaled", note="law + ic-scaled"),
    Variant("law-mono", scaling_law=True, monotone=MONO_TOKENS, note="law + mono"),
    Variant("law-compute", scaling_law=True, extra=compute_features, note="law + compute"),
    Variant("law-lropt", scaling_law=True, lr_optimum="features", note="law + lropt-feat"),
    Variant("law-bowl", bowl="diag", note="(a) law + a shared LR bowl, fitted jointly on all trials; trees on it"),
    Variant("law-gp", scaling_law=True, regressor="gp", note="(b) a GP instead of the trees on the law's residual"),
    Variant("law-bowl-gp", bowl="diag", regressor="gp", note="(a) + (b): a GP on the residual of law-bowl"),
    Variant("law-ridge", bowl="full", note="(a') law-bowl with a full quadratic form over the LRs and warm-down"),
    Variant("law-ridge-wd", bowl="full-wd", note="law-ridge with the weight decay in the form too"),
    Variant("law-ridge-wd-1", bowl="full-wd", bowl_cap=1.0,
            note="law-ridge-wd fitted on the trials below 1.0 (the basin, where the objective's weight is)"),
    Variant("law+ridge", average=("law", "law-ridge-wd"), note="mean of law and law-ridge-wd"),
    Variant("lr-ridge", options={"lr_ridge": True}, note="law+ridge as the package fits it (FitOptions.lr_ridge)"),
    Variant("law-s5", scaling_law=True, seed_offset=5, note="law with member seeds 5-9 (for the control)"),
    Variant("law+law", average=("law", "law-s5"), note="control for law+ridge: law with 10 members"),
    Variant("law-gp-cap", scaling_law=True, regressor="gp-cap",
            note="(b') law-gp on the trials below 1.1, kernel fitted on a subsample drawn by loss weight"),
    Variant("law-mix", scaling_law=True, regressor="mix", note="(b'') mean of law's trees and law-gp-cap"),
    Variant("ic-strict", interaction="strict", note="additive: trees on the architecture or on the LRs, not both"),
    Variant("ic-scaled", interaction="scaled", note="ic-strict, the LR trees also see width, total batch, steps"),
    Variant("ic-scaled-compute", interaction="scaled", extra=compute_features, note="ic-scaled + compute"),
    Variant("ic-scaled-lropt", interaction="scaled", lr_optimum="features", note="ic-scaled + LR-optimum distances"),
)}


def fit_objective(train: pd.DataFrame, v: Variant, opts: FitOptions) -> Callable[[pd.DataFrame], np.ndarray]:
    """The variant's ensemble fitted on the successful trials of TRAIN; returns a predictor of frames."""
    if v.options:
        model = fit_surrogate(train, opts, **v.options)
        return lambda df: model.predict_frame(df)["raw"]
    if v.average:
        fits = [fit_objective(train, VARIANTS[n], opts) for n in v.average]
        return lambda df: np.mean([f(df) for f in fits], axis=0)
    ok = train[train["success"]].reset_index(drop=True)
    y = ok["val_bpb"].to_numpy()
    lro = LROptimum().fit(frame_columns(ok), y) if v.lr_optimum else None

    def design(df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
        c = frame_columns(df)
        names, x = list(FEATURE_NAMES), feature_matrix(c)
        if v.extra is not None:
            n2, x2 = v.extra(c)
            names, x = names + n2, np.column_stack([x, x2])
        if lro is not None and v.lr_optimum in ("features", "both"):
            names = names + [f"dev_{lr}" for lr in LRS]
            x = np.column_stack([x, lro.deviations(c)])
        return names, x

    names, x = design(ok)
    law = fit_scaling_law(ok, top=LAW_TOP[0]) if v.scaling_law else None
    parts: list[Callable[[dict[str, np.ndarray]], np.ndarray]] = []
    if lro is not None and v.lr_optimum in ("base", "both"):
        parts.append(lro.predict)
    if law is not None:
        parts.append(law.predict)
    if v.throughput:
        parts.append(ThroughputLaw(batch=v.throughput == "width+batch").fit(ok).predict)
    if v.bowl:
        linear = ("WARMDOWN_RATIO", "WEIGHT_DECAY") if v.bowl == "full-wd" else ("WARMDOWN_RATIO",)
        parts.append(LawBowl(cap=v.bowl_cap, full=v.bowl.startswith("full"), linear=linear).fit(ok, opts).predict)

    def offset(df: pd.DataFrame) -> np.ndarray:
        c = frame_columns(df)
        return np.sum([f(c) for f in parts], axis=0)

    init = offset(ok) if parts else None
    gp = None
    if v.regressor in ("gp", "gp-cap", "mix"):
        c_ok = frame_columns(ok)
        base_ok = init if init is not None else np.zeros(len(y))
        sel = y < 1.1 if v.regressor != "gp" else np.ones(len(y), dtype=bool)
        w_gp = objective_weights(y[sel], opts)
        gp = fit_gp({k: a[sel] for k, a in c_ok.items()}, np.minimum(y, GP_CLIP)[sel] - base_ok[sel], w_gp,
                    opts.seed, by_weight=v.regressor != "gp")
        if v.regressor != "mix":
            return lambda df: gp(frame_columns(df)) + (offset(df) if init is not None else 0.0)
    mono = [v.monotone.get(n, 0) for n in names]
    base = dict(verbose=-1, num_threads=opts.num_threads, feature_fraction=0.8, bagging_fraction=0.8, bagging_freq=1,
                deterministic=True, force_row_wise=True, objective="regression", learning_rate=opts.learning_rate,
                num_leaves=opts.num_leaves, min_data_in_leaf=opts.min_data_in_leaf)
    if any(mono):
        base["monotone_constraints"] = mono
    if v.interaction:
        base["interaction_constraints"] = interaction_groups(names, v.interaction)
    w = objective_weights(y, opts)
    boosters = [lgb.train(dict(base, seed=opts.seed + v.seed_offset + k), lgb.Dataset(x, y, weight=w, init_score=init),
                          opts.n_estimators) for k in range(opts.n_models)]

    def predict(df: pd.DataFrame) -> np.ndarray:
        _, xt = design(df)
        p = np.mean([b.predict(xt, num_threads=1) for b in boosters], axis=0)
        if gp is not None:  # "mix": the trees' residual and the GP's, averaged
            p = 0.5 * (p + gp(frame_columns(df)))
        return p + offset(df) if init is not None else p

    return predict


def screen(df: pd.DataFrame, variants: list[Variant], opts: FitOptions, say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    directions = []
    for tr, te in ((0, 1), (1, 0)):
        train = df[df["seed"] == tr]
        test = df[(df["seed"] == te) & (df["method"] != CODE_METHOD)]
        test = test[~_key(test).isin(set(_key(train))).to_numpy()].reset_index(drop=True)
        say(f"default model, seed {tr} -> {te}")
        p_fail = fit_surrogate(train, opts).predict_frame(test)["p_fail"]
        directions.append((tr, te, train, test, p_fail))
    for v in variants:
        res: dict[str, Any] = {"note": v.note, "directions": {}}
        for tr, te, train, test, p_fail in directions:
            t0 = time.perf_counter()
            say(f"{v.name}: seed {tr} -> {te}")
            pred = fit_objective(train, v, opts)(test)
            arrays = (test["val_bpb"].to_numpy(), pred, test["success"].to_numpy(), p_fail < 0.5)
            runs = [{"name": f"{m} s{s}", **novel_metrics(*(a[idx] for a in arrays))}
                    for (m, s), idx in sorted(test.groupby(["method", "seed"]).indices.items())]
            res["directions"][f"{tr}->{te}"] = {"pooled": novel_metrics(*arrays), "runs": runs,
                                                "max_abs_comp_bias": max_abs_bias(runs),
                                                "seconds": time.perf_counter() - t0}
        out[v.name] = res
    return out


def _f(x: Any, nd: int = 4, sign: bool = False) -> str:
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def print_summary(results: dict[str, Any]) -> None:
    print(f"variant | dir | comp n | comp Spearman | comp RMSE | comp bias | max |bias| (n>={BIAS_MIN_N}) | "
          "all Spearman | feas acc")
    for name, res in results.items():
        for d, r in res["directions"].items():
            p = r["pooled"]
            print(f"{name} | {d} | {p['comp_n']} | {_f(p['comp_spearman'], 3)} | {_f(p['comp_rmse'])} | "
                  f"{_f(p['comp_bias'], sign=True)} | {_f(r['max_abs_comp_bias'])} | {_f(p['spearman'], 4)} | "
                  f"{_f(p['feas_acc'])}")
    print("\nper run, competitive: n / Spearman / RMSE / bias")
    for name, res in results.items():
        for d, r in res["directions"].items():
            cells = [f"{x['name']} {x['comp_n']}/{_f(x['comp_spearman'], 2)}/{_f(x['comp_rmse'])}/"
                     f"{_f(x['comp_bias'], sign=True)}" for x in r["runs"] if x["comp_n"] >= BIAS_MIN_N]
            print(f"{name} {d}: " + "; ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=Path, required=True)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0, help="first member seed of the ensembles (robustness check)")
    ap.add_argument("--top", type=int, default=2, help="ScalingLaw: best trials per architecture cell")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--only: unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    df = prepare_training_frame(load_trials(args.trials), include_code=False)
    df = df[df["TOTAL_BATCH_SIZE"].notna()].reset_index(drop=True)
    LAW_TOP[0] = args.top

    def say(m: str) -> None:
        print(f"[{time.strftime('%X')}] {m}", flush=True)

    results = screen(df, [VARIANTS[n] for n in names], FitOptions(seed=args.seed), say)
    print_summary(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
