"""Invariants a study must keep whatever happened to its workers (shared by the worker and fault tests)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from centaur.study.records import summarize

HERE = Path(__file__).parent
PAR = HERE / "fixtures" / "parallel" / "train.py"


def eval_lines(path: Path) -> list[dict[str, Any]]:
    """What the fixture script wrote: one line per evaluation that ran to its end."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def assert_one_to_one(study: optuna.Study, evals: list[dict[str, Any]]) -> None:
    """Every COMPLETE trial ran exactly once with its recorded configuration, and every evaluation that ran
    to its end is recorded: no finished trial lost, none duplicated."""
    runs = Counter(e["trial"] for e in evals)
    assert all(n == 1 for n in runs.values()), f"a trial evaluated twice: {runs}"
    by_trial = {e["trial"]: e for e in evals}
    complete = {t.number: t for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert set(complete) == set(by_trial), f"recorded vs evaluated differ: {set(complete) ^ set(by_trial)}"
    for n, t in complete.items():
        cfg = t.user_attrs["config"]
        assert by_trial[n]["config"] == {k: pytest.approx(v) for k, v in cfg.items()}


def assert_study_sound(
    study: optuna.Study, evals: list[dict[str, Any]], *, budget_s: float | None, workers: int, ok_cost_s: float
) -> None:
    """No trial left RUNNING, results one-to-one with evaluations, budget accounting exact (the sum of
    what finished trials cost) and overshot by at most one trial per worker."""
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert_one_to_one(study, evals)
    s = summarize(study)
    assert s.used_s == pytest.approx(sum(t.user_attrs.get("cost_s", 0.0) for t in trials if t.state.is_finished()))
    costs = [t.user_attrs["cost_s"] for t in trials if t.state.is_finished()]
    assert all(c >= 0.0 for c in costs)
    for t in trials:  # a successful trial counts its training seconds, exactly
        if t.state == TrialState.COMPLETE and t.user_attrs["status"] == "ok":
            assert t.user_attrs["cost_s"] == pytest.approx(ok_cost_s)
    if budget_s is not None:  # checked before each start: overshoot by at most one trial per worker
        assert budget_s <= s.used_s <= budget_s + workers * max(costs) + 1e-6
    retried = Counter(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs)
    assert all(n == 1 for n in retried.values()), f"a lost trial retried more than once: {retried}"
    for number in retried:
        assert trials[number].user_attrs.get("status") == "lost" and trials[number].state == TrialState.FAIL
