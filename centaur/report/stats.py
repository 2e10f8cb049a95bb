"""Per-method aggregates, curves on a common budget grid, average ranks and paired tests across seeds."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from centaur.report.collect import Run

if TYPE_CHECKING:
    from centaur.surrogate.instrument import Instrument

ALPHA = 0.05
FORWARD_FILL_SHARE = 0.98  # a run that spent this share of its budget counts as finished for the curves


@dataclass
class MethodRow:
    method: str
    n_seeds: int
    best_mean: float
    best_std: float  # population std (ddof 0), as the reference study reports it
    noise_free_mean: float | None
    noise_free_std: float | None
    fail_pct: float  # failed trials of any cause, % of counted trials (the study's "OOM%")
    failures: Counter = field(default_factory=Counter)  # summed over seeds
    trials_mean: float = 0.0
    llm_calls_mean: float | None = None  # None: the source does not record LLM use
    llm_seconds_mean: float | None = None
    fallbacks_mean: float | None = None
    seconds_mean: float | None = None  # bench wall seconds per study
    seconds_std: float | None = None
    regret_mean: float | None = None  # normalised regret of the noise-free value at the best trial
    regret_std: float | None = None
    distance_mean: float | None = None  # surrogate studies: the best trial's distance to the surrogate's data
    distance_max: float | None = None
    # surrogate studies: the ensemble spread at the best trial, where the surrogate is least sure of itself
    epistemic_mean: float | None = None
    epistemic_max: float | None = None


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        out[r.method].append(r)
    return dict(out)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=0))


def method_table(runs: list[Run]) -> list[MethodRow]:
    """One row per method, best first; a seed without any successful trial counts in the failure share only."""
    rows = []
    for method, rs in by_method(runs).items():
        bests = [r.best for r in rs if r.best is not None]
        nfs = [r.best_trial.noise_free for r in rs if r.best_trial is not None and r.best_trial.noise_free is not None]
        n_counted = sum(len(r.counted) for r in rs)
        failures: Counter = Counter()
        for r in rs:
            failures.update(r.failures)
        bm, bs = _mean_std(bests)
        nm, ns = _mean_std(nfs) if len(nfs) == len(bests) else (None, None)
        secs = [float(r.seconds) for r in rs if r.seconds is not None]
        sm, ss = _mean_std(secs)
        regrets = [r.regret for r in rs if r.regret is not None]
        rm, rsd = _mean_std(regrets) if len(regrets) == len(bests) else (None, None)
        dists = [r.best_trial.distance for r in rs if r.best_trial is not None and r.best_trial.distance is not None]
        dm = float(np.mean(dists)) if dists and len(dists) == len(bests) else None
        sds = [r.best_trial.epistemic_sd for r in rs
               if r.best_trial is not None and r.best_trial.epistemic_sd is not None]
        em = float(np.mean(sds)) if sds and len(sds) == len(bests) else None
        llm = all(r.llm_known for r in rs)
        rows.append(MethodRow(
            method=method,
            n_seeds=len(rs),
            best_mean=bm if bm is not None else math.nan,
            best_std=bs if bs is not None else math.nan,
            noise_free_mean=nm,
            noise_free_std=ns,
            fail_pct=100.0 * sum(failures.values()) / n_counted if n_counted else math.nan,
            failures=failures,
            trials_mean=float(np.mean([len(r.counted) for r in rs])),
            llm_calls_mean=float(np.mean([sum(t.llm_calls for t in r.counted) for r in rs])) if llm else None,
            llm_seconds_mean=float(np.mean([sum(t.llm_seconds for t in r.counted) for r in rs])) if llm else None,
            fallbacks_mean=float(np.mean([sum(t.source.startswith("llm-fallback") for t in r.counted) for r in rs]))
            if llm else None,
            seconds_mean=sm,
            seconds_std=ss,
            regret_mean=rm,
            regret_std=rsd,
            distance_mean=dm,
            distance_max=max(dists) if dm is not None else None,
            epistemic_mean=em,
            epistemic_max=max(sds) if em is not None else None,
        ))
    return sorted(rows, key=lambda r: (math.isnan(r.best_mean), r.best_mean))


def common_budget(runs: list[Run]) -> float:
    """The x range of the curves: the shared budget, else the longest run."""
    budgets = {r.budget_s for r in runs if r.budget_s}
    if len(budgets) == 1:
        return float(budgets.pop())
    return max((r.used_s for r in runs), default=1.0) or 1.0


def curve_on_grid(run: Run, grid: np.ndarray, budget_s: float) -> np.ndarray:
    """Best so far at each grid point; NaN before the first success and past the end of an unfinished run."""
    cost, best = run.incumbent()
    out = np.full(len(grid), np.nan)
    if len(cost) == 0:
        return out
    idx = np.searchsorted(cost, grid, side="right") - 1  # the last trial finished by each grid time
    has = idx >= 0
    out[has] = best[idx[has]]
    if run.used_s < FORWARD_FILL_SHARE * budget_s:
        out[grid > cost[-1]] = np.nan
    return out


def curves(runs: list[Run], grid: np.ndarray, budget_s: float) -> dict[str, np.ndarray]:
    """Per method, a (seeds x grid) array of best-so-far values."""
    return {m: np.vstack([curve_on_grid(r, grid, budget_s) for r in rs]) for m, rs in by_method(runs).items()}


def average_ranks(runs: list[Run], grid: np.ndarray, budget_s: float) -> tuple[dict[str, np.ndarray], list[int]]:
    """Mean rank (1 = best) of each method at each grid time over the seeds every method has.

    A method with no success yet at a time ranks after those with one (ties share the average rank).
    """
    groups = by_method(runs)
    seeds = sorted(set.intersection(*(set(r.seed for r in rs) for rs in groups.values()))) if groups else []
    methods = list(groups)
    if not seeds or len(methods) < 2:
        return {}, seeds
    ranks = np.zeros((len(methods), len(grid)))
    for seed in seeds:
        vals = np.vstack([curve_on_grid(next(r for r in groups[m] if r.seed == seed), grid, budget_s)
                          for m in methods])
        vals = np.where(np.isnan(vals), np.inf, vals)
        ranks += stats.rankdata(vals, axis=0)
    ranks /= len(seeds)
    return dict(zip(methods, ranks, strict=True)), seeds


@dataclass
class PairStat:
    a: str
    b: str
    n: int  # paired seeds (common seed indices where both have a success)
    mean_a: float
    mean_b: float
    delta: float  # mean(a - b); negative: a is better (lower)
    wins_a: int  # seeds where a is lower
    wins_b: int
    p_two_sided: float | None
    p_a_better: float | None  # one-sided, H1: a < b
    p_method: str  # "exact" or "normal approximation"
    ci_low: float | None  # 95% bootstrap CI of the mean paired difference
    ci_high: float | None
    min_p: float  # the smallest two-sided p any outcome could give with this n
    note: str
    # surrogate studies: the paired mean difference of the noise-free values at the best trials, and the
    # competitive-region RMSE of the surrogate on held-out runs it is compared with
    nf_n: int = 0
    nf_delta: float | None = None
    resolution_rmse: float | None = None
    resolution_basis: str | None = None  # "cross-seed", or "leave-one-run-out" from a record that predates it

    @property
    def can_be_significant(self) -> bool:
        return self.min_p <= ALPHA

    @property
    def resolved(self) -> bool | None:
        """Whether the surrogate resolves this difference: |nf_delta| >= its competitive-region RMSE;
        None without an instrument record or paired noise-free values."""
        if self.nf_delta is None or self.resolution_rmse is None:
            return None
        return abs(self.nf_delta) >= self.resolution_rmse


def min_two_sided_p(n: int) -> float:
    """Exact Wilcoxon signed-rank: the most extreme of the 2^n sign patterns has p = 2 / 2^n."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0**n)


def pairwise(runs: list[Run], order: list[str] | None = None, *, seed: int = 0,
             n_resamples: int = 9999) -> list[PairStat]:
    """Wilcoxon signed-rank (zero_method="wilcox", as the study) and a bootstrap CI for every pair of methods,
    paired by seed over the seeds both have; A comes first in ORDER (e.g. best mean first)."""
    groups = by_method(runs)
    out = []
    for a, b in itertools.combinations(order or list(groups), 2):
        best_a = {r.seed: r.best for r in groups[a] if r.best is not None}
        best_b = {r.seed: r.best for r in groups[b] if r.best is not None}
        common = sorted(set(best_a) & set(best_b))
        xa = np.array([best_a[s] for s in common])
        xb = np.array([best_b[s] for s in common])
        pair = _pair(a, b, xa, xb, seed, n_resamples)
        pair.nf_n, pair.nf_delta = _noise_free_delta(groups[a], groups[b])
        pair.resolution_rmse = resolution_rmse(groups[a] + groups[b])
        pair.resolution_basis = resolution_basis(groups[a] + groups[b])
        out.append(pair)
    return out


def _noise_free_delta(ra: list[Run], rb: list[Run]) -> tuple[int, float | None]:
    """Seeds paired and mean(A - B) of the noise-free values at each seed's best trial."""

    def nf(runs: list[Run]) -> dict[int, float]:
        return {r.seed: r.best_trial.noise_free for r in runs
                if r.best_trial is not None and r.best_trial.noise_free is not None}

    a, b = nf(ra), nf(rb)
    common = sorted(set(a) & set(b))
    return len(common), (float(np.mean([a[s] - b[s] for s in common])) if common else None)


def instruments(runs: list[Run]) -> list[Instrument]:
    """The distinct instrument records the runs carry (one for a bench on one surrogate)."""
    seen: dict[str, Instrument] = {}
    for r in runs:
        if r.instrument is not None:
            seen.setdefault(r.instrument.fingerprint, r.instrument)
    return list(seen.values())


def resolution_basis(runs: list[Run]) -> str | None:
    """The hold-out the runs' resolution is read from: LORO if any record predates the cross-seed one."""
    bases = {r.instrument.resolution_basis for r in runs if r.instrument is not None}
    return None if not bases else "leave-one-run-out" if "leave-one-run-out" in bases else "cross-seed"


def resolution_rmse(runs: list[Run]) -> float | None:
    """The competitive-region RMSE that decides whether a difference between these runs is resolved: the
    largest of their records' (they are one on one bench), None when a run has none."""
    values = [r.instrument.comp_rmse if r.instrument is not None else None for r in runs]
    known = [v for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


def _pair(a: str, b: str, xa: np.ndarray, xb: np.ndarray, seed: int, n_resamples: int) -> PairStat:
    d = xa - xb
    n = len(d)
    nonzero = int(np.count_nonzero(d))
    p2 = p1 = lo = hi = None
    method = "exact"
    if nonzero >= 1:
        exact = len(np.unique(np.abs(d[d != 0]))) == nonzero  # no ties among |d|
        method = "exact" if exact else "normal approximation"
        kw = {"zero_method": "wilcox", "method": "exact" if exact else "approx"}
        p2 = float(stats.wilcoxon(xa, xb, alternative="two-sided", **kw).pvalue)
        p1 = float(stats.wilcoxon(xa, xb, alternative="less", **kw).pvalue)
    if n >= 2:
        if np.all(d == d[0]):
            lo = hi = float(d[0])
        else:
            ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=n_resamples,
                                 method="percentile", rng=np.random.default_rng(seed)).confidence_interval
            lo, hi = float(ci.low), float(ci.high)
    mp = min_two_sided_p(nonzero)
    if n < 2:
        note = f"n = {n} paired seed(s): no test possible"
    elif mp > ALPHA:
        note = (f"n = {n} paired seeds is too small: the smallest possible two-sided p is {mp:.3g}, "
                f"so this comparison cannot be significant at the {ALPHA:g} level")
    elif p2 is not None and p2 <= ALPHA:
        note = f"significant at the {ALPHA:g} level (two-sided)"
    else:
        note = f"not significant at the {ALPHA:g} level (two-sided)"
    return PairStat(
        a=a, b=b, n=n,
        mean_a=float(xa.mean()) if n else math.nan, mean_b=float(xb.mean()) if n else math.nan,
        delta=float(d.mean()) if n else math.nan,
        wins_a=int(np.sum(d < 0)), wins_b=int(np.sum(d > 0)),
        p_two_sided=p2, p_a_better=p1, p_method=method, ci_low=lo, ci_high=hi, min_p=mp, note=note,
    )
