"""The surrogate of the reference study's task, fitted on its real trials.

Four parts, all keyed on the same physical features (features.py):
- objective: a scaling law in params, tokens and steps (scaling.py) plus a bagged ensemble of LightGBM
  regressors of val_bpb's residual from it on the successful trials; law + mean of the members is the
  noise-free value, the spread between members an epistemic uncertainty;
- feasibility: a LightGBM classifier of failure (almost always CUDA OOM), monotone in the memory estimate;
- cost: successes cost the 300 s training budget, failures a LightGBM regression of log wall time;
- noise: a heteroscedastic Gaussian whose sd depends on the val_bpb level, estimated from exactly
  repeated configurations.
Far from the data the trees extrapolate flat; a linear penalty beyond the support threshold keeps
optimizers from exploiting empty regions (docs/surrogate.md gives the numbers behind it).
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from centaur.surrogate.data import CODE_METHOD, HP_NAMES, impute_code_batch
from centaur.surrogate.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    TIME_BUDGET_S,
    config_columns,
    feature_matrix,
    frame_columns,
    normalized_hps,
    snap_config,
)
from centaur.surrogate.scaling import RidgeLaw, ScalingLaw, fit_ridge_law, fit_scaling_law

FORMAT_TAG = "centaur-surrogate"
# 2: objective loss weighted toward the competitive region; 3: trees on a scaling law's residual; 4: and a
# second ensemble on the law plus a learning-rate ridge, averaged (FitOptions.lr_ridge). Old caches refit.
FORMAT_VERSION = 4

# Level bins (val_bpb) of the noise model; noise grows with val_bpb (docs/surrogate.md, "Noise").
NOISE_EDGES: tuple[float, ...] = (0.98, 0.99, 1.0, 1.05, 1.2)


class SurrogateVersionError(RuntimeError):
    """A saved surrogate does not match this code's feature or format version."""


@dataclass(frozen=True)
class SurrogateOutcome:
    """What the surrogate says about one configuration."""

    feasible: bool
    observed: float | None  # noise_free + seeded Gaussian noise; None when infeasible
    noise_free: float  # model value (with the out-of-support penalty), also for infeasible configs
    cost_s: float
    distance_to_data: float
    in_support: bool
    p_feasible: float = 1.0
    epistemic_sd: float = 0.0
    noise_sd: float = 0.0
    penalty: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitOptions:
    """Knobs of `fit_surrogate`. The defaults are the ones chosen by cross-seed validation."""

    include_code: bool = False
    n_models: int = 5
    n_estimators: int = 700
    learning_rate: float = 0.04
    num_leaves: int = 15
    min_data_in_leaf: int = 10
    clf_estimators: int = 300
    cost_estimators: int = 200
    support_quantile: float = 0.99
    # val_bpb added per unit of normalized distance beyond the support threshold (see docs)
    ood_slope: float = 0.4
    # Sample weight of the successful trials with val_bpb < weight_below in the objective's loss (others: 1).
    # Upweighting the near-competitive region spends the trees' splits where comparisons are decided;
    # 1.0 turns it off (docs/surrogate.md, "Fidelity").
    competitive_weight: float = 5.0
    weight_below: float = 1.0
    # Fit the trees on the residual of a scaling law in params, tokens and steps, so they extrapolate along it
    # (docs/surrogate.md, "Fidelity"); False: trees on val_bpb itself (format 2's objective).
    scaling_law: bool = True
    # A second ensemble of the same trees on the residual of the law plus a shared learning-rate ridge
    # (scaling.RidgeLaw); the noise-free value is the mean of the two ensembles' predictions and epistemic_sd the
    # spread of all their members. The two err in opposite directions where a run walked away from the data's
    # learning rates (docs/surrogate.md, "Second round"). Only with scaling_law: the ridge sits on the law.
    lr_ridge: bool = True
    seed: int = 0
    num_threads: int = 1  # the machine is shared: one thread per fit avoids spin-wait collapse


@dataclass
class NoiseModel:
    """sd of one observation as a step function of the val_bpb level."""

    edges: tuple[float, ...]
    sd: tuple[float, ...]  # len(edges) + 1 values
    n_groups: int = 0
    n_trials: int = 0
    median_sd: float = 0.0
    mean_sd: float = 0.0
    pooled_sd: float = 0.0
    per_bin: list[dict[str, float]] = field(default_factory=list)

    def sd_at(self, level: np.ndarray) -> np.ndarray:
        return np.asarray(self.sd)[np.searchsorted(np.asarray(self.edges), level, side="right")]


def repeat_groups(df: pd.DataFrame) -> pd.DataFrame:
    """Exactly repeated successful configurations: one row per group of >= 2 with n, mean, sd, range."""
    s = df[df["success"]]
    key = s[list(HP_NAMES)].round(10).astype(str).agg("|".join, axis=1)
    g = s.groupby(key)["val_bpb"]
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "sd": g.std(ddof=1), "range": g.max() - g.min()})
    return out[out["n"] >= 2]


def fit_noise(df: pd.DataFrame, edges: Sequence[float] = NOISE_EDGES) -> NoiseModel:
    """Per level bin, the median within-group sd of exact repeats. The median, not the pooled sd: a few
    groups have ranges up to ~0.5 (runs on a throttled GPU, near-divergent configs) and would dominate
    a pooled estimate; the reference document quotes medians too."""
    g = repeat_groups(df)
    if g.empty:
        raise ValueError("no repeated configurations: cannot estimate the observation noise")
    idx = np.searchsorted(np.asarray(edges), g["mean"].to_numpy(), side="right")
    overall = float(g["sd"].median())
    sds: list[float] = []
    per_bin: list[dict[str, float]] = []
    lo_edges = (-math.inf, *edges)
    hi_edges = (*edges, math.inf)
    for b in range(len(edges) + 1):
        sel = g[idx == b]
        sd = float(sel["sd"].median()) if len(sel) >= 5 else overall
        sds.append(sd)
        pooled = float(np.sqrt(((sel["n"] - 1) * sel["sd"] ** 2).sum() / max((sel["n"] - 1).sum(), 1)))
        per_bin.append({"lo": lo_edges[b], "hi": hi_edges[b], "groups": int(len(sel)), "median_sd": sd,
                        "pooled_sd": pooled})
    pooled_all = float(np.sqrt(((g["n"] - 1) * g["sd"] ** 2).sum() / (g["n"] - 1).sum()))
    return NoiseModel(edges=tuple(edges), sd=tuple(sds), n_groups=int(len(g)), n_trials=int(g["n"].sum()),
                      median_sd=overall, mean_sd=float(g["sd"].mean()), pooled_sd=pooled_all, per_bin=per_bin)


def prepare_training_frame(df: pd.DataFrame, include_code: bool) -> pd.DataFrame:
    """Drop (or impute) the code agent's trials; see docs/surrogate.md for the decision."""
    if include_code:
        return impute_code_batch(df)
    return df[df["method"] != CODE_METHOD].reset_index(drop=True)


class SurrogateModel:
    """A fitted surrogate; build it with `fit_surrogate`, persist it with `save`/`load`."""

    def __init__(
        self,
        *,
        regressors: list[lgb.Booster],
        classifier: lgb.Booster,
        cost_model: lgb.Booster,
        noise: NoiseModel,
        support_points: np.ndarray,
        support_threshold: float,
        options: FitOptions,
        meta: dict[str, Any],
        law: ScalingLaw | None = None,
        ridge: RidgeLaw | None = None,
        ridge_regressors: list[lgb.Booster] | None = None,
    ) -> None:
        self.law = law
        self.ridge = ridge
        self.ridge_regressors = ridge_regressors or []
        self.regressors = regressors
        self.classifier = classifier
        self.cost_model = cost_model
        self.noise = noise
        self.support_points = support_points
        self.support_threshold = support_threshold
        self.options = options
        self.meta = meta
        self.feature_version = FEATURE_VERSION
        self._tree = cKDTree(support_points)

    # -- persistence -------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tree", None)  # rebuilt on load: cheaper than pickling it
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("ridge", None)  # saved before FitOptions.lr_ridge existed
        state.setdefault("ridge_regressors", [])
        self.__dict__.update(state)
        self._tree = cKDTree(self.support_points)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION,
                   "feature_version": self.feature_version, "data_sha256": self.meta.get("data_sha256"),
                   "model": self}
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, expected_sha256: str | None = None) -> SurrogateModel:
        """Load a saved model; refuse one built by another feature/format version or other data."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"surrogate model not found: {path}")
        with open(path, "rb") as f:
            try:
                payload = pickle.load(f)
            except Exception as e:  # a truncated or foreign file
                raise SurrogateVersionError(f"{path} is not a saved surrogate ({e})") from e
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
            raise SurrogateVersionError(f"{path} is not a saved centaur surrogate")
        if payload.get("format_version") != FORMAT_VERSION:
            raise SurrogateVersionError(f"{path}: format version {payload.get('format_version')}, this code "
                                        f"reads {FORMAT_VERSION}; refit with `centaur surrogate fit`")
        if payload.get("feature_version") != FEATURE_VERSION:
            raise SurrogateVersionError(f"{path}: built with feature version {payload.get('feature_version')}, "
                                        f"this code has {FEATURE_VERSION}; refit with `centaur surrogate fit`")
        if expected_sha256 is not None and payload.get("data_sha256") != expected_sha256:
            raise SurrogateVersionError(f"{path}: fitted on data {payload.get('data_sha256')}, "
                                        f"expected {expected_sha256}")
        model = payload["model"]
        if not isinstance(model, cls):
            raise SurrogateVersionError(f"{path} holds a {type(model).__name__}, not a SurrogateModel")
        return model

    # -- prediction --------------------------------------------------------------------------------

    def predict_columns(self, cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectorised noise-free predictions for column arrays (already snapped)."""
        x = feature_matrix(cols)
        members = np.vstack([b.predict(x, num_threads=1) for b in self.regressors])
        raw = members.mean(axis=0) + (self.law.predict(cols) if self.law is not None else 0.0)
        spread = members.std(axis=0)
        if self.ridge is not None and self.ridge_regressors:  # FitOptions.lr_ridge: two ensembles, averaged
            ridge = np.vstack([b.predict(x, num_threads=1) for b in self.ridge_regressors]) + self.ridge.predict(cols)
            everyone = np.vstack([members + (self.law.predict(cols) if self.law is not None else 0.0), ridge])
            raw = 0.5 * (raw + ridge.mean(axis=0))
            spread = everyone.std(axis=0)
        p_fail = self.classifier.predict(x, num_threads=1)
        fail_cost = np.exp(self.cost_model.predict(x, num_threads=1))
        dist, _ = self._tree.query(normalized_hps(cols), k=1)
        dist = dist / math.sqrt(len(HP_NAMES))
        excess = np.maximum(dist - self.support_threshold, 0.0)
        penalty = self.options.ood_slope * excess
        value = raw + penalty
        return {"raw": raw, "value": value, "epistemic_sd": spread, "p_fail": p_fail,
                "fail_cost": fail_cost, "distance": dist, "penalty": penalty,
                "noise_sd": self.noise.sd_at(value)}

    def predict_frame(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Noise-free predictions for the rows of a trials table (no snapping: the data are as run)."""
        return self.predict_columns(frame_columns(df))

    def evaluate_batch(self, configs: Sequence[Mapping[str, Any]], *, rng: np.random.Generator
                       ) -> list[SurrogateOutcome]:
        """Evaluate several configs; draws one normal per config, in order, whatever the outcome."""
        snapped = [snap_config(c) for c in configs]
        p = self.predict_columns(config_columns(snapped))
        z = rng.standard_normal(len(snapped))
        out: list[SurrogateOutcome] = []
        for i in range(len(snapped)):
            # OOM is a deterministic function of the config in the data (2 of 905 repeat groups are
            # mixed), so feasibility is thresholded, not sampled.
            feasible = bool(p["p_fail"][i] < 0.5)
            value = float(p["value"][i])
            sd = float(p["noise_sd"][i])
            dist = float(p["distance"][i])
            out.append(SurrogateOutcome(
                feasible=feasible,
                observed=value + sd * float(z[i]) if feasible else None,
                noise_free=value,
                cost_s=TIME_BUDGET_S if feasible else float(p["fail_cost"][i]),
                distance_to_data=dist,
                in_support=dist <= self.support_threshold,
                p_feasible=float(1.0 - p["p_fail"][i]),
                epistemic_sd=float(p["epistemic_sd"][i]),
                noise_sd=sd,
                penalty=float(p["penalty"][i]),
            ))
        return out

    def evaluate(self, config: Mapping[str, Any], *, rng: np.random.Generator) -> SurrogateOutcome:
        """One configuration (snapped like the reference runner does); deterministic for a given rng."""
        return self.evaluate_batch([config], rng=rng)[0]

    def describe(self) -> str:
        m = self.meta
        law = "scaling law + " if self.law is not None else ""
        if self.ridge is not None and self.ridge_regressors:
            law = "mean of (scaling law, scaling law + LR ridge), each + "
        return (f"surrogate: {law}{len(self.regressors)} x LightGBM on {m.get('n_success')} successful trials "
                f"({m.get('n_trials')} in all, code trials {'in' if self.options.include_code else 'out'}), "
                f"{self._weight_note()}noise sd {self.noise.median_sd:.2e} (median of {self.noise.n_groups} "
                f"repeat groups), "
                f"support threshold {self.support_threshold:.3f}")

    def _weight_note(self) -> str:
        # options pickled before the field existed lack it (the class default would lie): they were unweighted
        w = vars(self.options).get("competitive_weight", 1.0)
        return "" if w == 1.0 else f"loss weight x{w:g} below {self.options.weight_below:g}, "


def _support(df_success: pd.DataFrame, quantile: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Unique normalized successful configs and the quantile of their leave-one-out NN distances."""
    pts = np.unique(np.round(normalized_hps(frame_columns(df_success)), 12), axis=0)
    tree = cKDTree(pts)
    d, _ = tree.query(pts, k=2)
    loo = d[:, 1] / math.sqrt(len(HP_NAMES))  # column 0 is the point itself
    return pts, float(np.quantile(loo, quantile)), loo


def objective_weights(y: np.ndarray, opts: FitOptions) -> np.ndarray | None:
    """Per-trial loss weights of the objective regressors: `competitive_weight` below `weight_below`."""
    if opts.competitive_weight == 1.0:
        return None
    if opts.competitive_weight <= 0:
        raise ValueError(f"competitive_weight must be > 0, got {opts.competitive_weight}")
    return np.where(y < opts.weight_below, opts.competitive_weight, 1.0)


def fit_surrogate(
    df: pd.DataFrame,
    options: FitOptions | None = None,
    *,
    data_sha256: str | None = None,
    **overrides: Any,
) -> SurrogateModel:
    """Fit all parts on a trials table from `load_trials` (keyword overrides patch `options`)."""
    opts = options or FitOptions()
    if overrides:
        opts = FitOptions(**{**asdict(opts), **overrides})
    t0 = time.perf_counter()
    data = prepare_training_frame(df, opts.include_code)
    data = data[data["TOTAL_BATCH_SIZE"].notna()].reset_index(drop=True)
    ok = data[data["success"]].reset_index(drop=True)
    if len(ok) < 20:
        raise ValueError(f"only {len(ok)} successful trials: too few to fit a surrogate")
    base = dict(verbose=-1, num_threads=opts.num_threads, feature_fraction=0.8, bagging_fraction=0.8,
                bagging_freq=1, deterministic=True, force_row_wise=True)

    x_ok = feature_matrix(frame_columns(ok))
    y_ok = ok["val_bpb"].to_numpy()
    w_ok = objective_weights(y_ok, opts)
    law = fit_scaling_law(ok) if opts.scaling_law else None
    init = law.predict(frame_columns(ok)) if law is not None else None
    regs = []
    for k in range(opts.n_models):
        params = dict(base, objective="regression", learning_rate=opts.learning_rate,
                      num_leaves=opts.num_leaves, min_data_in_leaf=opts.min_data_in_leaf, seed=opts.seed + k)
        data_k = lgb.Dataset(x_ok, y_ok, weight=w_ok, init_score=init, free_raw_data=True)
        regs.append(lgb.train(params, data_k, opts.n_estimators))
    ridge, ridge_regs = None, []
    if opts.lr_ridge and law is not None:
        ridge = fit_ridge_law(ok, competitive_weight=opts.competitive_weight, weight_below=opts.weight_below)
        if ridge is not None:
            init_r = ridge.predict(frame_columns(ok))
            for k in range(opts.n_models):
                params = dict(base, objective="regression", learning_rate=opts.learning_rate,
                              num_leaves=opts.num_leaves, min_data_in_leaf=opts.min_data_in_leaf, seed=opts.seed + k)
                ridge_regs.append(lgb.train(params, lgb.Dataset(x_ok, y_ok, weight=w_ok, init_score=init_r),
                                            opts.n_estimators))

    x_all = feature_matrix(frame_columns(data))
    failed = (~data["success"]).to_numpy().astype(float)
    mono = [1 if f == "mem_gb" else 0 for f in FEATURE_NAMES]  # more memory never makes OOM less likely
    clf_params = dict(base, objective="binary", learning_rate=0.05, num_leaves=15, min_data_in_leaf=10,
                      monotone_constraints=mono, seed=opts.seed)
    clf = lgb.train(clf_params, lgb.Dataset(x_all, failed), opts.clf_estimators)

    # Failure cost: OOMs die during start-up/compilation, so wall time grows with depth; the rare
    # timeouts (>= 500 s) are not predictable from the config and are left out.
    fails = data[(~data["success"]) & (data["wt"] < 500)]
    if len(fails) >= 20:
        xf, yf = feature_matrix(frame_columns(fails)), np.log(fails["wt"].clip(lower=1.0).to_numpy())
    else:  # too few failures: a constant model at 30 s
        xf, yf = x_all[:20], np.full(min(20, len(x_all)), math.log(30.0))
    cost = lgb.train(dict(base, objective="regression", learning_rate=0.05, num_leaves=7, min_data_in_leaf=20,
                          seed=opts.seed), lgb.Dataset(xf, yf), opts.cost_estimators)

    noise = fit_noise(data)
    pts, thr, loo = _support(ok, opts.support_quantile)
    meta = {
        "data_sha256": data_sha256 if data_sha256 is not None else df.attrs.get("sha256"),
        "data_path": df.attrs.get("path"),
        "n_trials": int(len(data)),
        "n_success": int(len(ok)),
        "n_failed": int((~data["success"]).sum()),
        "methods": sorted(data["method"].unique().tolist()),
        "success_wt_median": float(ok["wt"].median()),
        "failure_wt_median": float(data.loc[~data["success"], "wt"].median()) if failed.any() else None,
        "loo_nn_median": float(np.median(loo)),
        "best_observed": float(y_ok.min()),
        "scaling_law": law.as_dict() if law is not None else None,
        "ridge_law": ridge.as_dict() if ridge is not None else None,
        "fit_seconds": time.perf_counter() - t0,
        "lightgbm": lgb.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return SurrogateModel(regressors=regs, classifier=clf, cost_model=cost, noise=noise, support_points=pts,
                          support_threshold=thr, options=opts, meta=meta, law=law, ridge=ridge,
                          ridge_regressors=ridge_regs)
