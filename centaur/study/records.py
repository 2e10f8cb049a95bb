"""How a trial is recorded in the Optuna study, and summaries computed from those records.

Every finished trial is COMPLETE with its objective value; a failed one carries the configured
penalty as its value (so classical samplers learn to avoid it), a constraint value > 0, and its
failure class in the user attribute `status`. A trial lost with its worker is FAIL.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from centaur.study.schema import (  # noqa: F401  (re-exported: older imports name this module)
    ALIVE_ATTR,
    CONFIG_ATTR,
    COST_ATTR,
    OWNER_ATTR,
    SAMPLER_ATTR,
    SOURCE_ATTR,
    STARTED_ATTR,
    STATUS_ATTR,
    STUDY_BUDGET,
    STUDY_METHOD,
    STUDY_PENALTY,
    STUDY_SEED,
    STUDY_TASK,
    VERIFIED_ATTR,
    WALL_ATTR,
)

FEASIBLE_CONSTRAINT = "failed"


def status_of(t: FrozenTrial) -> str:
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.WAITING:
        return "waiting"
    return t.user_attrs.get(STATUS_ATTR, "ok" if t.state == TrialState.COMPLETE else "lost")


def is_success(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and status_of(t) == "ok" and t.value is not None and math.isfinite(t.value)


def cost_of(t: FrozenTrial) -> float:
    return float(t.user_attrs.get(COST_ATTR, 0.0)) if t.state.is_finished() else 0.0


@dataclass
class StudySummary:
    name: str
    method: str | None
    seed: int | None
    budget_s: float | None
    n_finished: int = 0
    n_running: int = 0
    n_ok: int = 0
    failures: Counter = field(default_factory=Counter)
    used_s: float = 0.0
    wall_s: float = 0.0
    sampler_s: float = 0.0
    llm_s: float = 0.0
    llm_calls: int = 0
    fallbacks: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_config: dict[str, Any] | None = None
    best_metric: float | None = None  # the best trial's metric as printed (a maximised one is stored negated)
    verified: Counter = field(default_factory=Counter)  # ok trials by verdict on their values, and overridden ones

    @property
    def budget_left_s(self) -> float | None:
        return None if self.budget_s is None else max(0.0, self.budget_s - self.used_s)


def summarize(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> StudySummary:
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    s = _empty_summary(study)
    for t in trials:
        if t.state == TrialState.RUNNING:
            s.n_running += 1
        elif t.state.is_finished():
            _add_finished(s, t)
    return s


class RunningSummary:
    """`summarize` for a worker's loop: a finished trial never changes, so each is read once and the
    per-trial budget check costs O(new trials) instead of O(all trials) (590 trials of Random search
    spent most of their loop time re-summarizing)."""

    def __init__(self) -> None:
        self._finished: StudySummary | None = None
        self._seen: set[int] = set()

    def __call__(self, study: optuna.Study) -> StudySummary:
        if self._finished is None:
            self._finished = _empty_summary(study)
        running = 0
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING:
                running += 1
            elif t.state.is_finished() and t.number not in self._seen:
                self._seen.add(t.number)
                _add_finished(self._finished, t)
        head = _empty_summary(study)
        return dataclasses.replace(self._finished, name=head.name, method=head.method, seed=head.seed,
                                   budget_s=head.budget_s, n_running=running, failures=Counter(self._finished.failures),
                                   verified=Counter(self._finished.verified))  # fmt: skip


def _empty_summary(study: optuna.Study) -> StudySummary:
    attrs = study.user_attrs
    return StudySummary(
        name=study.study_name,
        method=attrs.get(STUDY_METHOD),
        seed=attrs.get(STUDY_SEED),
        budget_s=attrs.get(STUDY_BUDGET),
    )


def _add_finished(s: StudySummary, t: FrozenTrial) -> None:
    s.n_finished += 1
    s.used_s += cost_of(t)
    s.wall_s += float(t.user_attrs.get(WALL_ATTR, 0.0))
    s.sampler_s += float(t.user_attrs.get(SAMPLER_ATTR, 0.0))
    s.llm_s += float(t.user_attrs.get("llm_seconds", 0.0))
    s.llm_calls += int(t.user_attrs.get("llm_calls", 0))
    verdict = t.user_attrs.get(VERIFIED_ATTR)
    if verdict is not None and (is_success(t) or verdict == "overridden"):  # a failure's values gave no result
        s.verified[str(verdict)] += 1
    if str(t.user_attrs.get(SOURCE_ATTR, "")).startswith("llm-fallback"):
        s.fallbacks += 1
    if is_success(t):
        s.n_ok += 1
        if s.best_value is None or t.value < s.best_value:
            s.best_value, s.best_trial, s.best_config = t.value, t.number, t.user_attrs.get(CONFIG_ATTR)
            printed = t.user_attrs.get("metric_value")
            s.best_metric = float(printed) if isinstance(printed, (int, float)) else t.value
    else:
        s.failures[status_of(t)] += 1
