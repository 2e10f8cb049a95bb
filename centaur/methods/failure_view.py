"""How a failed trial is told to a sampler: each method declares the form it models well.

The study loop records every failed trial (OOM, crash, timeout, ...) the same way, whatever the
method: state FAIL (so optuna-dashboard, Optuna's plots and `trials_dataframe()` show a failure, and no
penalty squashes the axis of the real values), its class in the `status` user attribute, the value
its method is told in `penalty` (the study's `--penalty`, default 100), and the constraint `failed` =
1.0 (0.0 on successes and pruned trials). Every method reads the study through a view (`FailuresTold`,
put around each sampler by `create_sampler`) that shows such a trial COMPLETE with that value, as
studies recorded failures before 2026-12-07 (those still read the same), so what an optimizer models
did not change. A lost trial (its worker died; `status` "lost") stays FAIL to every method: it never ran.
Reports count failures from `status`, so how a sampler is *shown* a failure changes nothing there.

One value of 100 among values near 0.98 is harmless to rank-based methods (TPE's split, CMA-ES's
ranks) but squashes every success into one point of a GP's standardised targets. So a method reads
the study through a view that shows failures in its form:

- "penalty": the value as recorded (the penalty) and no `failed` constraint: the reference study's
  protocol (Optuna 4.8's samplers saw only the value 100).
- "constraint": the value of the worst success so far and the `failed` constraint kept (> 0):
  Optuna 5's constrained samplers (GPSampler, TPESampler) model feasibility apart from the value.
- "worst": the value of the worst success so far and no constraint: for libraries that model a
  value only (HEBO, Nevergrad), a failure is bad but not an outlier.
- "own": the value as recorded before (the penalty) with every constraint; the method reads `status`
  itself (cmaes, smac, the LLM methods, HEBO and Nevergrad, which apply their form themselves).

Before any success the "worst" value is the penalty (nothing to compare with). A user's own
constraints (`trial.set_constraint` in a plain Optuna program) are never touched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.study import optuna_private as op
from centaur.study.records import FEASIBLE_CONSTRAINT
from centaur.study.schema import STATUS_ATTR, TOLD_ATTR

FORMS = ("penalty", "constraint", "worst", "own")
_FAILED_KEY = op.constraint_key(FEASIBLE_CONSTRAINT)
_LIST_KEY = op.constraint_list_key()


def _dashboard_copy(t: FrozenTrial) -> bool:
    """Whether the trial's constraint list is the study loop's copy of `failed` (not a user's constraints)."""
    return _FAILED_KEY in t.system_attrs and t.system_attrs.get(_LIST_KEY) == [t.system_attrs[_FAILED_KEY]]


def told_value(t: FrozenTrial) -> float | None:
    """The value a method is told for a trial that ran and failed (recorded FAIL), else None."""
    told = t.user_attrs.get(TOLD_ATTR)
    if told is None or t.user_attrs.get(STATUS_ATTR, "ok") in ("ok", "lost", "pruned"):
        return None
    return float(told)


def as_told(t: FrozenTrial) -> FrozenTrial:
    """A failure recorded FAIL as methods read it: COMPLETE with its told value (else `t` itself)."""
    if t.state != TrialState.FAIL:
        return t
    told = told_value(t)
    if told is None:
        return t
    out = copy.copy(t)
    out.state = TrialState.COMPLETE
    out.values = [told]
    return out


def is_failure(t: FrozenTrial) -> bool:
    """A finished trial that ran and failed: FAIL with a told value, or COMPLETE with the penalty as its
    value and a failure class in `status` (as studies recorded it before 2026-12-07)."""
    if t.state == TrialState.FAIL:
        return told_value(t) is not None
    return t.state == TrialState.COMPLETE and t.user_attrs.get(STATUS_ATTR, "ok") != "ok"


def is_success(t: FrozenTrial) -> bool:
    return (
        t.state == TrialState.COMPLETE
        and t.user_attrs.get(STATUS_ATTR, "ok") == "ok"
        and t.values is not None
        and len(t.values) == 1
        and math.isfinite(t.values[0])
    )


def worst_success(trials: list[FrozenTrial], maximize: bool) -> float | None:
    """The worst value among the successes (None before the first)."""
    values = [t.values[0] for t in trials if is_success(t)]
    if not values:
        return None
    return min(values) if maximize else max(values)


def shown(t: FrozenTrial, form: str, worst: float | None) -> FrozenTrial:
    """`t` as a sampler with failure form `form` sees it (the same object where nothing changes)."""
    t = as_told(t)
    if form == "own":
        return t
    failed = is_failure(t)
    strip = {_FAILED_KEY} if form != "constraint" and _FAILED_KEY in t.system_attrs else set()
    if _dashboard_copy(t):
        strip.add(_LIST_KEY)  # the same constraint once more: a sampler would count it twice
    rewrite_value = failed and form != "penalty" and worst is not None and t.values is not None and len(t.values) == 1
    if not (strip or rewrite_value):
        return t
    out = copy.copy(t)
    if strip:
        out.system_attrs = {k: v for k, v in t.system_attrs.items() if k not in strip}
    if rewrite_value:
        out.value = worst
    return out


class FailureView:
    """The study as a sampler with one failure form reads it; everything else is the study's own.

    Finished trials never change, so their rewritten copies are cached (keyed by the worst value
    they were rewritten with) instead of being copied again at each of a trial's many reads.
    """

    def __init__(self, study: Any, form: str, cache: dict[int, tuple[float | None, FrozenTrial]]) -> None:
        self._study = study
        self._form = form
        self._cache = cache

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        want = None if states is None else tuple(states)
        fetch = want
        if want is not None and TrialState.COMPLETE in want and TrialState.FAIL not in want:
            fetch = (*want, TrialState.FAIL)  # failures recorded FAIL are shown COMPLETE
        trials = self._study._get_trials(deepcopy=deepcopy, states=fetch, use_cache=use_cache)
        worst = None
        if self._form not in ("penalty", "own") and any(is_failure(t) for t in trials):
            everything = trials if states is None else self._study._get_trials(deepcopy=False, use_cache=use_cache)
            worst = worst_success(everything, self._study.direction == optuna.study.StudyDirection.MAXIMIZE)
        if deepcopy:  # the caller may change its copies: never hand out cached ones
            out = [shown(t, self._form, worst) for t in trials]
        else:
            out = [self._shown_cached(t, worst) for t in trials]
        if fetch is not want:
            out = [t for t in out if t.state in want]
        return out

    def _shown_cached(self, t: FrozenTrial, worst: float | None) -> FrozenTrial:
        if not t.state.is_finished() or (self._form == "own" and t.state != TrialState.FAIL):
            return shown(t, self._form, worst)
        key = op.trial_id(t)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == worst:
            return hit[1]
        out = shown(t, self._form, worst)
        self._cache[key] = (worst, out)
        return out

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states, use_cache=False)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class FailuresTold(BaseSampler):
    """Wraps an Optuna sampler so that it reads the study through a `FailureView` of `form`."""

    def __init__(self, inner: BaseSampler, form: str, name: str, space: Any = None) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown failure form {form!r}; one of {', '.join(FORMS)}")
        self.inner, self.form, self.name = inner, form, name
        self.space = space  # centaur.samplers asks a method built on a space for it
        self._views: dict[int, dict[int, tuple[float | None, FrozenTrial]]] = {}

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_views": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        # What the study loop and the CLI ask of the method itself (close, client, records_source, ...).
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _view(self, study: optuna.Study) -> FailureView:
        return FailureView(study, self.form, self._views.setdefault(op.study_id(study), {}))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        told = told_value(trial) if state == TrialState.FAIL else None
        if told is not None:  # a failure is told as the view shows it: COMPLETE with its told value
            state, values = TrialState.COMPLETE, [told]
        # The trial as the view shows it: e.g. CmaEsSampler warns at every trial that carries a constraint.
        self.inner.after_trial(self._view(study), shown(trial, self.form, None), state, values)


    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def told_through_view(sampler: BaseSampler, name: str, space: Any = None) -> BaseSampler:
    """`sampler` reading the study with failures as its method is told them (see the module's doc)."""
    return sampler if isinstance(sampler, FailuresTold) else FailuresTold(sampler, "own", name, space)
