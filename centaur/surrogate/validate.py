"""Fidelity of the surrogate on held-out real trials: cross-seed and leave-one-method-out, and the held-out
runs the bench resembles, leave-one-run-out and leave-one-seed-out (`holdout_validation`).

Metrics on the successful test trials: Spearman, Kendall, RMSE overall and within the competitive
region (true val_bpb < 0.99); on all test trials: feasibility accuracy and balanced accuracy.
"novel" repeats the objective metrics on test configs that do not occur exactly in the training set:
LLAMBO-Paper runs the same fallback configs in both seeds and Random replays its sequence after a
resume (reference-study 8.1), so the plain cross-seed numbers are partly memorisation.

Leave-one-run-out holds out one (method, seed) run and trains on every other run (the code agent's runs
train only, as everywhere here); leave-one-seed-out holds out one seed and trains on the others (with
the reference study's two seeds: the cross-seed training sets). A method in a bench walks its own
trajectory into regions other runs may not have visited, which is what a held-out run measures. They
are scored on novel configurations only (test trials whose configuration does not occur in training),
overall and in the competitive region, pooled over the folds (every fold's predictions together) and
as the mean of the folds, with the bias (mean predicted − true). Leave-one-seed-out is the cross-seed
hold-out the instrument reads its resolution from; it is also scored per held-out run of the test seed,
because a pooled number hides a run that walked where the training seed's data are poor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from centaur.surrogate.data import CODE_METHOD, HP_NAMES, load_trials
from centaur.surrogate.model import FitOptions, SurrogateModel, fit_noise, fit_surrogate, prepare_training_frame

COMPETITIVE = 0.99

Progress = Callable[[str], None]


def _key(df: pd.DataFrame) -> pd.Series:
    return df[list(HP_NAMES)].round(10).astype(str).agg("|".join, axis=1)


def _corr(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(y) < 3 or np.ptp(y) == 0 or np.ptp(p) == 0:
        return math.nan, math.nan
    return float(stats.spearmanr(p, y)[0]), float(stats.kendalltau(p, y)[0])


def _rmse(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - y) ** 2))) if len(y) else math.nan


def split_metrics(model: SurrogateModel, test: pd.DataFrame, train: pd.DataFrame | None = None
                  ) -> dict[str, Any]:
    """Objective and feasibility metrics of `model` on the trials in `test`."""
    test = test[test["TOTAL_BATCH_SIZE"].notna()].reset_index(drop=True)
    pred = model.predict_frame(test) if len(test) else None
    out: dict[str, Any] = {"n_test": int(len(test))}
    if pred is None:
        return out
    ok = test["success"].to_numpy()
    y, p = test["val_bpb"].to_numpy()[ok], pred["raw"][ok]
    out["n_success"] = int(ok.sum())
    out["spearman"], out["kendall"] = _corr(p, y)
    out["rmse"] = _rmse(p, y)
    comp = y < COMPETITIVE
    out["comp_n"] = int(comp.sum())
    out["comp_spearman"], out["comp_kendall"] = _corr(p[comp], y[comp])
    out["comp_rmse"] = _rmse(p[comp], y[comp])
    if train is not None:
        novel = ~_key(test).isin(set(_key(train))).to_numpy()[ok]
        out["novel_n"] = int(novel.sum())
        out["novel_spearman"], _ = _corr(p[novel], y[novel])
        out["novel_rmse"] = _rmse(p[novel], y[novel])
        nc = novel & comp
        out["novel_comp_n"] = int(nc.sum())
        out["novel_comp_spearman"], _ = _corr(p[nc], y[nc])
    pred_ok = pred["p_fail"] < 0.5
    out["feas_acc"] = float(np.mean(pred_ok == ok))
    recalls = [float(np.mean(pred_ok[ok == c] == c)) for c in (True, False) if (ok == c).any()]
    out["feas_bacc"] = float(np.mean(recalls)) if len(recalls) == 2 else math.nan
    out["n_failed"] = int((~ok).sum())
    return out


def _fit(train: pd.DataFrame, opts: FitOptions) -> SurrogateModel:
    return fit_surrogate(train, opts, data_sha256=train.attrs.get("sha256"))


def validate_surrogate(
    path: str | Path,
    *,
    options: FitOptions | None = None,
    include_code: bool = False,
    methods: bool = True,
    cross_seed: bool = True,
    holdout: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Cross-seed (0 -> 1, 1 -> 0) and leave-one-method-out fidelity of the surrogate on the data, and
    with `holdout` ("run", "seed") leave-one-run-out and leave-one-seed-out (`holdout_validation`)."""
    opts = replace(options or FitOptions(), include_code=include_code)
    say = progress or (lambda _m: None)
    raw = load_trials(path)
    df = _frame(raw, include_code)
    # Test sets never hold the code agent's trials: their HPs do not describe what ran.
    evaluable = df[df["method"] != CODE_METHOD]
    fits = _Fits(df, opts)
    splits: list[dict[str, Any]] = []
    for tr_seed, te_seed in ((0, 1), (1, 0)) if cross_seed else ():
        say(f"seed {tr_seed} -> seed {te_seed}")
        train = df[df["seed"] == tr_seed]
        model = fits.model(df["seed"] == tr_seed)
        splits.append({"kind": "seed", "name": f"seed {tr_seed} -> {te_seed}", "n_train": int(len(train)),
                       **split_metrics(model, evaluable[evaluable["seed"] == te_seed], train)})
    if methods:
        for m in sorted(evaluable["method"].unique()):
            say(f"leave out {m}")
            train = df[df["method"] != m]
            model = fits.model(df["method"] != m)
            splits.append({"kind": "method", "name": f"without {m}", "n_train": int(len(train)),
                           **split_metrics(model, evaluable[evaluable["method"] == m], train)})
    summary = {}
    for kind in ("seed", "method"):
        rows = [s for s in splits if s["kind"] == kind]
        if rows:
            summary[kind] = {k: float(np.nanmean([r.get(k, math.nan) for r in rows]))
                             for k in _METRIC_KEYS}
    noise = fit_noise(df)
    held = {kind: _holdout(fits, kind, say) for kind in holdout}
    return {
        "data": {"path": str(path), "sha256": raw.attrs.get("sha256"), "n_trials": int(len(raw)),
                 "n_used": int(len(df)), "include_code": include_code},
        "options": asdict(opts),
        "splits": splits,
        "summary": summary,
        "holdout": held,
        "noise": {"groups": noise.n_groups, "trials": noise.n_trials, "median_sd": noise.median_sd,
                  "mean_sd": noise.mean_sd, "pooled_sd": noise.pooled_sd, "per_bin": noise.per_bin},
    }


HOLDOUTS = ("run", "seed")
HOLDOUT_TITLES = {"run": "leave-one-run-out", "seed": "cross-seed (leave-one-seed-out)"}
_HOLDOUT_KEYS = ("n", "spearman", "rmse", "bias", "feas_acc", "comp_n", "comp_spearman", "comp_rmse", "comp_bias")


def _frame(raw: pd.DataFrame, include_code: bool) -> pd.DataFrame:
    df = prepare_training_frame(raw, include_code)
    return df[df["TOTAL_BATCH_SIZE"].notna()].reset_index(drop=True)


class _Fits:
    """One fit per distinct training set (with two seeds, leave-one-seed-out trains on the cross-seed
    training sets: they are fitted once)."""

    def __init__(self, df: pd.DataFrame, opts: FitOptions) -> None:
        self.df, self.opts = df, opts
        self._models: dict[bytes, SurrogateModel] = {}
        self.n_fits, self.fit_seconds = 0, 0.0

    def model(self, mask: pd.Series) -> SurrogateModel:
        key = np.packbits(mask.to_numpy(dtype=bool)).tobytes()
        if key not in self._models:
            t0 = time.perf_counter()
            self._models[key] = _fit(self.df[mask], self.opts)
            self.n_fits += 1
            self.fit_seconds += time.perf_counter() - t0
        return self._models[key]


def novel_metrics(y: np.ndarray, p: np.ndarray, ok: np.ndarray, pred_ok: np.ndarray) -> dict[str, Any]:
    """Spearman and RMSE of the predictions `p` of the successful trials' true values `y` (`ok` marks
    them among all test trials), overall and where y < COMPETITIVE, and the feasibility accuracy
    (`pred_ok`: predicted to succeed) over all test trials."""
    yo, po = y[ok], p[ok]
    comp = yo < COMPETITIVE
    return {"n_test": int(len(ok)), "n": int(ok.sum()), "spearman": _corr(po, yo)[0], "rmse": _rmse(po, yo),
            "bias": _bias(po, yo), "feas_acc": float(np.mean(pred_ok == ok)) if len(ok) else math.nan,
            "n_failed": int((~ok).sum()), "comp_n": int(comp.sum()), "comp_spearman": _corr(po[comp], yo[comp])[0],
            "comp_rmse": _rmse(po[comp], yo[comp]), "comp_bias": _bias(po[comp], yo[comp])}


def _bias(p: np.ndarray, y: np.ndarray) -> float:
    """Mean of predicted − true: positive when the model thinks a region worse than it is."""
    return float(np.mean(p - y)) if len(y) else math.nan


# A run's bias counts toward `max_abs_comp_bias` only with this many competitive trials: below it the mean
# of a handful of residuals is noise, not a region the model gets wrong.
BIAS_MIN_N = 10


def max_abs_bias(rows: Sequence[dict[str, Any]], min_n: int = BIAS_MIN_N) -> float:
    """The largest |competitive bias| over the rows with at least `min_n` competitive trials (NaN if none)."""
    vals = [abs(r["comp_bias"]) for r in rows if r.get("comp_n", 0) >= min_n and not math.isnan(r["comp_bias"])]
    return max(vals) if vals else math.nan


def _holdout(fits: _Fits, kind: str, say: Progress) -> dict[str, Any]:
    """Every fold of one hold-out kind ("run": one method-seed run, "seed": one seed), scored on the
    test trials whose configuration does not occur in the fold's training set."""
    if kind not in HOLDOUTS:
        raise ValueError(f"unknown hold-out {kind!r}; choose from {', '.join(HOLDOUTS)}")
    df = fits.df
    evaluable = df[df["method"] != CODE_METHOD]
    if kind == "run":
        groups = sorted(evaluable.groupby(["method", "seed"]).groups)
        folds = [(f"{m} s{s}", (df["method"] == m) & (df["seed"] == s)) for m, s in groups]
    else:
        folds = [(f"seed {s}", df["seed"] == s) for s in sorted(evaluable["seed"].unique())]
    t0, fits0, fit_s0 = time.perf_counter(), fits.n_fits, fits.fit_seconds
    rows, pooled, runs = [], [], []
    for i, (name, held) in enumerate(folds):
        say(f"{HOLDOUT_TITLES[kind]} {i + 1}/{len(folds)}: {name}")
        train, test = df[~held], df[held & (df["method"] != CODE_METHOD)]
        test = test[~_key(test).isin(set(_key(train))).to_numpy()].reset_index(drop=True)
        arrays = (test["val_bpb"].to_numpy(), np.full(len(test), math.nan), test["success"].to_numpy(),
                  np.zeros(len(test), dtype=bool))
        if len(test):
            pred = fits.model(~held).predict_frame(test)
            arrays = (arrays[0], pred["raw"], arrays[2], pred["p_fail"] < 0.5)
        pooled.append(arrays)
        rows.append({"name": name, "n_train": int((~held).sum()), "n_held": int((held & (df["method"]
                     != CODE_METHOD)).sum()), **novel_metrics(*arrays)})
        if kind == "seed":  # a pooled seed hides a run the model cannot follow: score each run of it too
            for (m, s), idx in sorted(test.groupby(["method", "seed"]).indices.items()):
                runs.append({"name": f"{m} s{s}", **novel_metrics(*(a[idx] for a in arrays))})
    cat = [np.concatenate(a) for a in zip(*pooled, strict=True)]
    mean = {k: float(np.nanmean([r[k] for r in rows])) if any(not math.isnan(r[k]) for r in rows) else math.nan
            for k in _HOLDOUT_KEYS}
    per_run = runs if kind == "seed" else rows
    return {"folds": rows, "runs": runs, "pooled": novel_metrics(*cat), "mean": mean,
            "n_defined": {k: int(sum(not math.isnan(r[k]) for r in rows)) for k in ("spearman", "comp_spearman")},
            "max_abs_comp_bias": max_abs_bias(per_run), "bias_min_n": BIAS_MIN_N,
            "fits": fits.n_fits - fits0, "fit_seconds": fits.fit_seconds - fit_s0,
            "seconds": time.perf_counter() - t0}


def holdout_validation(path: str | Path, kinds: Sequence[str] = HOLDOUTS, *, options: FitOptions | None = None,
                       include_code: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Leave-one-run-out and/or leave-one-seed-out fidelity alone (`validate_surrogate` with only them)."""
    return validate_surrogate(path, options=options, include_code=include_code, methods=False, cross_seed=False,
                              holdout=kinds, progress=progress)


_METRIC_KEYS = ("spearman", "kendall", "rmse", "comp_spearman", "comp_kendall", "comp_rmse", "novel_spearman",
                "novel_rmse", "novel_comp_spearman", "feas_acc", "feas_bacc")


def code_trials_analysis(path: str | Path, *, options: FitOptions | None = None,
                         progress: Progress | None = None) -> dict[str, Any]:
    """Numbers behind the decision to leave "Karpathy Agent (Code)" out of the fit.

    1. Same HPs, different outcome? Code trials whose (imputed) HPs match a non-code config exactly.
    2. Residuals of the code trials under a model fitted without them (systematic offset?).
    3. Cross-seed fidelity on non-code test trials when the code trials are in or out of training.
    """
    opts = options or FitOptions()
    say = progress or (lambda _m: None)
    raw = load_trials(path)
    both = prepare_training_frame(raw, include_code=True)
    code = both[both["method"] == CODE_METHOD]
    rest = both[both["method"] != CODE_METHOD]
    out: dict[str, Any] = {"n_code": int(len(code)), "n_code_success": int(code["success"].sum()),
                           "n_code_tbs_missing": int(raw.loc[raw["method"] == CODE_METHOD,
                                                             "TOTAL_BATCH_SIZE"].isna().sum()),
                           "n_code_unique_hps": int(_key(code).nunique())}
    cs, rs = code[code["success"]], rest[rest["success"]]
    ck, rk = _key(cs), _key(rs)
    rmean = rs.groupby(rk)["val_bpb"].mean()
    cmean = cs.groupby(ck)["val_bpb"].agg(["mean", "size"])
    common = cmean.index.intersection(rmean.index)
    diffs = cmean.loc[common, "mean"] - rmean.loc[common]
    out["same_hps"] = {"groups": int(len(common)), "code_trials": int(cmean.loc[common, "size"].sum()),
                       "mean_diff": float(diffs.mean()) if len(diffs) else math.nan,
                       "median_diff": float(diffs.median()) if len(diffs) else math.nan}
    # How many code trials sit at exactly the same HPs as the best code source? The agent edits code
    # while the logged HPs stay put, so one HP vector covers many different programs.
    vc = ck.value_counts()
    top = vc.index[0]
    out["most_common_hps"] = {"trials": int(vc.iloc[0]),
                              "val_bpb_min": float(cs.loc[ck == top, "val_bpb"].min()),
                              "val_bpb_max": float(cs.loc[ck == top, "val_bpb"].max()),
                              "val_bpb_sd": float(cs.loc[ck == top, "val_bpb"].std())}
    say("fit without code trials")
    model = fit_surrogate(rest, replace(opts, include_code=False))
    res = cs["val_bpb"].to_numpy() - model.predict_frame(cs)["raw"]
    noise_sd = model.noise.sd_at(cs["val_bpb"].to_numpy())
    out["residuals"] = {"mean": float(res.mean()), "median": float(np.median(res)),
                        "mad": float(np.median(np.abs(res))),
                        "share_beyond_3sd_noise": float(np.mean(np.abs(res) > 3 * noise_sd))}
    comp_res = res[cs["val_bpb"].to_numpy() < COMPETITIVE]
    out["residuals"]["competitive_mean"] = float(comp_res.mean()) if len(comp_res) else math.nan
    fid: dict[str, dict[str, float]] = {}
    for label, inc in (("without", False), ("with", True)):
        rows = []
        for tr, te in ((0, 1), (1, 0)):
            say(f"code {label}: seed {tr} -> {te}")
            train = both if inc else rest
            train = train[train["seed"] == tr]
            m = fit_surrogate(train, replace(opts, include_code=inc))
            rows.append(split_metrics(m, rest[rest["seed"] == te], train))
        fid[label] = {k: float(np.nanmean([r[k] for r in rows])) for k in _METRIC_KEYS}
    out["fidelity"] = fid
    return out


def _f(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


_COLUMNS = [("split", "name"), ("n ok", "n_success"), ("Spearman", "spearman"), ("Kendall", "kendall"),
            ("RMSE", "rmse"), ("n<0.99", "comp_n"), ("Spear<0.99", "comp_spearman"),
            ("Kend<0.99", "comp_kendall"), ("RMSE<0.99", "comp_rmse"), ("novel n", "novel_n"),
            ("Spear novel", "novel_spearman"), ("Spear nov<0.99", "novel_comp_spearman"),
            ("feas acc", "feas_acc"), ("feas bacc", "feas_bacc")]
# For a narrow terminal: the same numbers in three tables of a few columns each.
_GROUPS = [
    ("overall", ["n ok", "Spearman", "Kendall", "RMSE", "feas acc", "feas bacc"]),
    ("competitive region (val_bpb < 0.99)", ["n<0.99", "Spear<0.99", "Kend<0.99", "RMSE<0.99"]),
    ("novel configurations", ["novel n", "Spear novel", "Spear nov<0.99"]),
]


def report_table(report: dict[str, Any], columns: list[str] | None = None, title: str | None = None) -> Table:
    """A rich table of the validation splits and their means (`columns`: a subset of the headers)."""
    kind = "with" if report["data"]["include_code"] else "without"
    t = Table(title=title or f"Surrogate fidelity ({kind} code trials)")
    cols = [(h, k) for h, k in _COLUMNS if columns is None or h == "split" or h in columns]
    for head, _ in cols:
        t.add_column(head, justify="left" if head == "split" else "right", overflow="fold")
    for s in report["splits"]:
        t.add_row(*[_f(s.get(k)) for _, k in cols])
    for kind_, means in report["summary"].items():
        t.add_row(*[f"mean ({kind_})" if k == "name" else _f(means.get(k)) for _, k in cols], style="bold")
    return t


def report_tables(report: dict[str, Any], width: int) -> list[Table]:
    """One wide table, or on a terminal narrower than it needs, three narrow ones; then the hold-out
    tables (`holdout_tables`), if the report has any."""
    kind = "with" if report["data"]["include_code"] else "without"
    if not report["splits"]:
        tables = []
    elif width >= 170:
        tables = [report_table(report)]
    else:
        tables = [report_table(report, cols, f"Surrogate fidelity ({kind} code trials): {name}")
                  for name, cols in _GROUPS]
    return tables + holdout_tables(report)


_HOLDOUT_GROUPS = [
    ("novel configurations", [("n ok", "n"), ("Spearman", "spearman"), ("RMSE", "rmse"), ("n failed", "n_failed"),
                              ("feas acc", "feas_acc")]),
    (f"novel, val_bpb < {COMPETITIVE}", [("n", "comp_n"), ("Spearman", "comp_spearman"),
                                                        ("RMSE", "comp_rmse"), ("bias", "comp_bias")]),
]


_COUNTS = ("n", "comp_n", "n_failed")


def holdout_tables(report: dict[str, Any]) -> list[Table]:
    """Per hold-out kind, two narrow tables (under 80 columns): every fold, the pooled folds and their
    mean, on novel configurations, overall and in the competitive region."""
    tables = []
    for kind, res in report.get("holdout", {}).items():
        for group, cols in _HOLDOUT_GROUPS:
            title = f"{HOLDOUT_TITLES.get(kind, kind)}: {group}"
            t = Table(title=title, min_width=len(title) + 2)
            t.add_column("held out", overflow="fold")
            for head, _ in cols:
                t.add_column(head, justify="right")
            for r in res["folds"]:
                t.add_row(r["name"], *[_f(r.get(k)) for _, k in cols])
            t.add_row("pooled", *[_f(res["pooled"].get(k)) for _, k in cols], style="bold")
            means = ["" if k in _COUNTS else _f(res["mean"].get(k)) for _, k in cols]
            t.add_row(f"mean of {len(res['folds'])}", *means)
            tables.append(t)
        if res.get("runs"):
            tables.append(_runs_table(kind, res))
    return tables


def _runs_table(kind: str, res: dict[str, Any]) -> Table:
    """Every held-out run of a seed hold-out, in the competitive region: where a pooled number hides one."""
    title = f"{HOLDOUT_TITLES.get(kind, kind)}: per run, novel, val_bpb < {COMPETITIVE}"
    t = Table(title=title, min_width=len(title) + 2)
    t.add_column("held-out run", overflow="fold")
    for head in ("n", "Spearman", "RMSE", "bias", "all: Spearman"):
        t.add_column(head, justify="right")
    for r in res["runs"]:
        t.add_row(r["name"], *[_f(r.get(k)) for k in ("comp_n", "comp_spearman", "comp_rmse", "comp_bias", "spearman")])
    t.add_row(f"max |bias| (n >= {res['bias_min_n']})", "", "", "", _f(res["max_abs_comp_bias"]), "", style="bold")
    return t


def format_report(report: dict[str, Any], width: int = 200) -> str:
    """The validation table plus the noise estimate as plain text."""
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for table in report_tables(report, width):
        console.print(table)
    n = report["noise"]
    console.print(f"noise: {n['groups']} repeat groups ({n['trials']} trials); sd median {n['median_sd']:.2e}, "
                  f"mean {n['mean_sd']:.2e}, pooled {n['pooled_sd']:.2e}")
    return console.export_text()


def support_analysis(path: str | Path, *, options: FitOptions | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Held-out error against the distance to the training data (cross-seed and leave-one-method-out
    splits pooled), and the least-squares slope of the residual beyond the support threshold: the
    evidence behind `FitOptions.ood_slope`."""
    opts = replace(options or FitOptions(), ood_slope=0.0)
    say = progress or (lambda _m: None)
    df = prepare_training_frame(load_trials(path), include_code=False)
    splits = [(df["seed"] == s, df["seed"] != s) for s in (0, 1)]
    splits += [(df["method"] != m, df["method"] == m) for m in sorted(df["method"].unique())]
    parts = []
    for i, (tr, te) in enumerate(splits):
        say(f"split {i + 1}/{len(splits)}")
        model = fit_surrogate(df[tr], opts)
        test = df[te & df["success"]]
        p = model.predict_frame(test)
        parts.append(pd.DataFrame({"res": test["val_bpb"].to_numpy() - p["raw"], "rel": p["distance"]
                                   / model.support_threshold, "excess": np.maximum(
                                       p["distance"] - model.support_threshold, 0.0), "pred": p["raw"]}))
    r = pd.concat(parts, ignore_index=True)
    edges = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, np.inf]
    r["bin"] = pd.cut(r["rel"], edges, include_lowest=True)
    bins = []
    for b, g in r.groupby("bin", observed=True):
        comp = g[g["pred"] < COMPETITIVE]
        bins.append({"distance/threshold": str(b), "n": int(len(g)), "mean_residual": float(g["res"].mean()),
                     "mae": float(g["res"].abs().mean()), "n_pred_competitive": int(len(comp)),
                     "mean_residual_pred_competitive": float(comp["res"].mean()) if len(comp) else math.nan})
    out = r[r["excess"] > 0]
    slope = float((out["res"] * out["excess"]).sum() / (out["excess"] ** 2).sum()) if len(out) else math.nan
    return {"bins": bins, "n_out": int(len(out)), "n": int(len(r)), "ls_slope_beyond_threshold": slope}
