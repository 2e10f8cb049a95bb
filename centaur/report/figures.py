"""PNG figures of a report (matplotlib, headless): convergence, incumbent traces, average rank, final values."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from centaur.report.collect import Run  # noqa: E402
from centaur.report.stats import average_ranks, by_method, curves  # noqa: E402

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; line styles add a second cue.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
STYLES = ["-", "--", "-.", ":"]
GRID_POINTS = 500
DPI = 130


def time_unit(budget_s: float) -> tuple[float, str]:
    """Seconds per axis unit and its name: hours for day-scale budgets, minutes or seconds for short ones."""
    if budget_s >= 2 * 3600:
        return 3600.0, "hours"
    if budget_s >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def style_of(i: int) -> dict:
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": STYLES[(i // len(PALETTE) + i) % len(STYLES)]}


def _finish(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def convergence(runs: list[Run], order: list[str], budget_s: float, metric: str, path: Path) -> Path:
    """Best so far against the cumulative trial budget: mean over seeds with a +/- 1 std band."""
    grid = np.linspace(0.0, budget_s, GRID_POINTS)
    cs = curves(runs, grid, budget_s)
    unit, unit_name = time_unit(budget_s)
    hours = grid / unit
    fig, ax = plt.subplots(figsize=(8 if len(order) <= 4 else 10.5, 5))
    tops, lows = [], []
    for i, m in enumerate(order):
        arr = cs[m]
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before the first success
                mean, std = np.nanmean(arr, axis=0), np.nanstd(arr, axis=0)
        st = style_of(i)
        ax.plot(hours, mean, label=f"{m} (n={arr.shape[0]})", lw=2, **st)
        ax.fill_between(hours, mean - std, mean + std, color=st["color"], alpha=0.18, lw=0)
        later = mean[(grid >= 0.1 * budget_s) & np.isfinite(mean)]
        if len(later):
            tops.append(float(later.max()))
        if np.isfinite(mean).any():
            lows.append(float(np.nanmin(mean - std)))
    if tops and lows:
        lo, hi = min(lows), max(tops)
        pad = 0.05 * (hi - lo) if hi > lo else 0.001
        ax.set_ylim(lo - pad, hi + pad)  # the first minutes would squash the interesting part
    ax.set_xlim(0, hours[-1])
    ax.set_xlabel(f"cumulative trial budget spent ({unit_name})")
    ax.set_ylabel(f"best {metric} so far (lower is better)")
    ax.set_title("Convergence: mean over seeds, band = ±1 std")
    ax.grid(alpha=0.3)
    _legend(ax, len(order))
    return _finish(fig, path)


def _legend(ax: plt.Axes, n: int) -> None:
    """Inside the axes for a few methods; to the right of them for many, where it would hide curves."""
    if n <= 4:
        ax.legend(loc="best", frameon=True)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)


def incumbents(runs: list[Run], order: list[str], budget_s: float, metric: str, path: Path) -> Path:
    """Per method, its best seed: every successful trial (grey), the incumbent (staircase), failures (rug)."""
    groups = by_method(runs)
    n = len(order)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    picked = {m: min((r for r in groups[m] if r.best is not None), key=lambda r: r.best, default=None) for m in order}
    all_vals = np.array([t.value for r in picked.values() if r for t in r.counted if t.value is not None])
    bests = [r.best for r in picked.values() if r]
    if len(all_vals) and bests:
        lo = min(bests)
        # The staircases are what matters: with many trials, show them plus a margin of the trials above
        # (poor trials far above would flatten them); with few, show every trial.
        top = max(float(np.nanmax(r.incumbent()[1])) for r in picked.values() if r)
        hi = top + 0.6 * (top - lo) if len(all_vals) >= 20 and top > lo else float(all_vals.max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.001
        ylim = (lo - pad, hi + pad)
    else:
        ylim = None
    for i, m in enumerate(order):
        ax = axes[i // ncols][i % ncols]
        run = picked[m]
        st = style_of(i)
        if run is None:
            ax.set_title(f"{m}: no successful trial")
            ax.set_axis_off()
            continue
        cost, best = run.incumbent()
        unit, unit_name = time_unit(budget_s)
        h = cost / unit
        ok = np.array([t.value is not None for t in run.counted])
        vals = np.array([t.value if t.value is not None else np.nan for t in run.counted])
        ax.scatter(h[ok], vals[ok], s=8, color="#999999", alpha=0.6, label="successful trial", lw=0)
        ax.step(h, best, where="post", color=st["color"], lw=2, label="best so far")
        new_best = np.r_[True, best[1:] < best[:-1]] & ok & np.isfinite(best)
        ax.scatter(h[new_best], best[new_best], s=22, color=st["color"], zorder=3, label="new best")
        if ylim:
            ax.set_ylim(*ylim)
            fails = h[~ok]
            ax.plot(fails, np.full(len(fails), ylim[0]), "|", color="#D55E00", ms=9, alpha=0.7,
                    label=f"failed trial ({len(fails)})")
        ax.set_title(f"{m}, seed {run.seed}: best {run.best:.4f}")
        ax.set_xlabel(f"cumulative trial budget ({unit_name})")
        if i % ncols == 0:
            ax.set_ylabel(f"{metric} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    fig.suptitle("Incumbent traces (best seed of each method; trials far above the staircases are off the plot)"
                 if len(all_vals) >= 20 else "Incumbent traces (best seed of each method)")
    return _finish(fig, path)


def ranks(runs: list[Run], order: list[str], budget_s: float, path: Path) -> Path | None:
    """Average rank (1 = best) over the seeds all methods share, against the budget; None if not comparable."""
    grid = np.linspace(0.0, budget_s, GRID_POINTS)
    rk, seeds = average_ranks(runs, grid, budget_s)
    if not rk:
        return None
    fig, ax = plt.subplots(figsize=(8 if len(order) <= 4 else 10.5, 4.5))
    unit, unit_name = time_unit(budget_s)
    for i, m in enumerate(order):
        ax.plot(grid / unit, rk[m], label=m, lw=2, **style_of(i))
    ax.set_ylim(len(order) + 0.3, 0.7)  # rank 1 at the top
    ax.set_xlim(0, budget_s / unit)
    ax.set_xlabel(f"cumulative trial budget spent ({unit_name})")
    ax.set_ylabel("average rank (1 = best)")
    ax.set_title(f"Average rank of the best-so-far value over {len(seeds)} common seed(s)")
    ax.grid(alpha=0.3)
    _legend(ax, len(order))
    return _finish(fig, path)


def finals(runs: list[Run], order: list[str], metric: str, path: Path) -> Path:
    """Best value of every seed per method, with the mean and ±1 std."""
    groups = by_method(runs)
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(order) + 1.6))
    rng = np.random.default_rng(0)
    for i, m in enumerate(order):
        vals = np.array([r.best for r in groups[m] if r.best is not None])
        y = len(order) - 1 - i
        if len(vals) == 0:
            continue
        st = style_of(i)
        ax.scatter(vals, y + rng.uniform(-0.12, 0.12, len(vals)), color=st["color"], s=28, alpha=0.8,
                   label="one seed" if i == 0 else None)
        ax.errorbar(vals.mean(), y, xerr=vals.std(ddof=0), fmt="D", color="black", ms=6, capsize=4,
                    label="mean ± 1 std" if i == 0 else None)
    ax.set_yticks(range(len(order)), list(reversed(order)))
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.set_xlabel(f"best {metric} of the run (lower is better)")
    ax.set_title("Final best value per seed")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="best", fontsize=8)
    return _finish(fig, path)
