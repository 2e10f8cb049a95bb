"""Values as a Gaussian process is shown them: ranks mapped through the normal quantile ("copula").

A GP standardises its targets. A few poor successes (val_bpb 1.2-1.5 at the corners of the box beside
values near 0.975) then take most of the variance, the good region becomes one flat point, and
expected improvement keeps proposing corners: one of the 10 surrogate seeds of `gp` stalled this way.
Ranks bound every outlier; the normal quantile of a rank keeps the ordering and makes the targets
look like the Gaussian the GP assumes. The transform is monotone, so which trial is best never changes;
only the finished values the GP reads are rewritten, never the study's record.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm, rankdata

WARPS = ("none", "copula")


def copula_values(values: list[float]) -> list[float]:
    """The normal quantile of each value's mid-rank, (rank - 0.5) / n; ties share a value."""
    ranks = rankdata(np.asarray(values, dtype=float), method="average")
    return [float(z) for z in norm.ppf((ranks - 0.5) / len(values))]


class CopulaView:
    """`study` (any object with Optuna's Study interface) with every finished single value rank-warped."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        # Ranks among every finished value of the study, whatever subset was asked for.
        everything = trials if states is None else self._study._get_trials(deepcopy=False, use_cache=use_cache)
        done = [t for t in everything if _warpable(t)]
        if len(done) < 2:
            return trials
        warped = dict(zip((t.number for t in done), copula_values([t.values[0] for t in done]), strict=True))
        out = []
        for t in trials:
            if t.number in warped:
                t = copy.copy(t)
                t.values = [warped[t.number]]
            out.append(t)
        return out

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _warpable(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == 1
