"""CMA-ES's search distribution in the hyperparameters' own units, for people and for LLM prompts.

CMA-ES works on a unit box (log scale where the parameter is log-scale); a prompt showing that
vector (as the reference study did with its raw covariance matrix, and without the mean) asks the
model to invert the transform in its head. Here the mean is decoded to a configuration, the spread of
each parameter is shown as a range in its units, and the covariance is reduced to its strongest
correlations, named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from centaur.space import Param


@dataclass
class ParamSpread:
    name: str
    centre: float  # the mean, in real units (unrounded)
    low: float  # mean - 1 sd, clipped to the range
    high: float  # mean + 1 sd, clipped to the range
    sd_unit: float  # sigma * sqrt(C_ii) on the unit scale (1.0 = the whole range)
    log: bool


@dataclass
class CmaView:
    generation: int
    sigma: float
    sigma0: float
    spreads: list[ParamSpread]
    correlations: list[tuple[str, str, float]]  # strongest first
    categorical: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> choice -> probability
    mean_config: dict[str, Any] = field(default_factory=dict)  # the mean as a runnable configuration

    def text(self, fmt: Any = None) -> str:
        fmt = fmt or _fmt
        lines = [
            f"- generation {self.generation}; overall step size sigma = {self.sigma:.4g} "
            f"(it started at {self.sigma0:.4g}; smaller means the search has narrowed)",
            "- centre of the search (the mean) per parameter, with the range one standard deviation around it "
            "and that deviation as a share of the parameter's range (of its log-range where the scale is log):",
        ]
        # One short line each: the prompt is read on every turn after a generation update.
        for s in self.spreads:
            lines.append(f"  {s.name}: {fmt(s.centre)} ({fmt(s.low)} .. {fmt(s.high)}, {s.sd_unit:.0%})")
        if self.correlations:
            pairs = ", ".join(f"{a} & {b} {r:+.2f}" for a, b, r in self.correlations)
            lines.append(f"- strongest correlations of the search (+: they rise together; -: one rises as the "
                         f"other falls): {pairs}")
        for name, probs in self.categorical.items():
            shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1]))
            lines.append(f"- {name} probabilities: {shown}")
        return "\n".join(lines)

    def compact_text(self) -> str:
        """The same facts in fewer tokens, for small local models (SmolLM2 spends a token per digit): one
        line a parameter, its mean and one-sd range with 2 significant digits."""
        lines = [f"gen {self.generation}, sigma {short_number(self.sigma, 2)} (start {short_number(self.sigma0, 2)}); "
                 "mean (mean-1sd..mean+1sd):"]
        lines += [f"{s.name} {short_number(s.centre, 2)} ({short_number(s.low, 2)}..{short_number(s.high, 2)})"
                  for s in self.spreads]
        if self.correlations:
            lines.append("corr: " + ", ".join(f"{a}&{b} {r:+.1f}" for a, b, r in self.correlations))
        for name, probs in self.categorical.items():
            ranked = sorted(probs.items(), key=lambda kv: -kv[1])
            shown = " ".join(f"{k} {v:.2f}".replace(" 0.", " .") for k, v in ranked)
            lines.append(f"{name} p: {shown}")
        return "\n".join(lines)


def short_number(v: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits and no more: integers as they are, small magnitudes in
    scientific notation without padding (1.2e-3, not 0.0012 or 1.20e-03), trailing zeros dropped."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    x = float(v)
    if x == 0 or not np.isfinite(x):
        return "0" if x == 0 else str(x)
    if abs(x) < 0.01:
        mantissa, exp = f"{x:.{max(0, digits - 1)}e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        return f"{mantissa}e{int(exp)}"
    if abs(x) >= 10 ** digits:
        return f"{x:.0f}"
    text = f"{x:.{digits}g}"
    if "e" in text:  # g switched to scientific for a large magnitude within `digits`
        return f"{x:.0f}"
    return text


def build_view(
    *,
    params: list[Param],
    mean_unit: np.ndarray,
    cov_unit: np.ndarray,
    sigma: float,
    sigma0: float,
    generation: int,
    from_unit: Any,
    mean_config: dict[str, Any],
    categorical: dict[str, dict[str, float]] | None = None,
    n_correlations: int = 4,
    min_correlation: float = 0.2,
) -> CmaView:
    """`mean_unit`/`cov_unit` are CMA-ES's mean and covariance on the unit box for `params` (in that
    order); `from_unit(p, u)` maps a unit value of `p` back to its real units."""
    sd = sigma * np.sqrt(np.clip(np.diag(cov_unit), 0.0, None))
    spreads = []
    for i, p in enumerate(params):
        m = float(np.clip(mean_unit[i], 0.0, 1.0))
        lo, hi = max(0.0, m - sd[i]), min(1.0, m + sd[i])
        spreads.append(ParamSpread(p.name, from_unit(p, m), from_unit(p, lo), from_unit(p, hi), float(sd[i]),
                                   bool(p.log or p.kind == "pow2")))
    correlations: list[tuple[str, str, float]] = []
    if len(params) > 1:
        denom = np.sqrt(np.outer(np.diag(cov_unit), np.diag(cov_unit)))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(denom > 0, cov_unit / denom, 0.0)
        pairs = [(abs(corr[i, j]), i, j) for i in range(len(params)) for j in range(i + 1, len(params))]
        for strength, i, j in sorted(pairs, reverse=True)[:n_correlations]:
            if strength >= min_correlation:
                correlations.append((params[i].name, params[j].name, float(corr[i, j])))
    return CmaView(generation, float(sigma), float(sigma0), spreads, correlations, categorical or {}, mean_config)


def _fmt(v: float) -> str:
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}" if abs(v - round(v)) < 1e-9 or abs(v) >= 100 else f"{v:.1f}"
    return f"{v:.3g}"
