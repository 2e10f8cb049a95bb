"""Failed trials are recorded as Optuna's FAIL (for people, dashboards and plots), yet every method
models exactly what it modelled when they were recorded COMPLETE with the penalty: the same seed proposes
the same configurations under both records, and a study written the old way reads and resumes the same."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import centaur
import centaur.study.loop as loop
from centaur.methods.failures import FORMS, FailureView, is_failure, told_value
from centaur.space import Param, SearchSpace
from centaur.study.records import summarize
from centaur.tasks.base import TrialResult, TrialStatus

PENALTY = 100.0


class BowlWithWall:
    """A bowl whose deep, wide corner runs out of memory: failures and successes from the first trials."""

    name = "bowl"
    metric = "val_bpb"
    space = SearchSpace((
        Param("LEARNING_RATE", "float", 0.01, low=1e-4, high=1.0, log=True),
        Param("WIDTH", "pow2", 64, low=16, high=1024),
        Param("LAYERS", "int", 3, low=1, high=8),
    ))

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        if config["LAYERS"] * math.log2(config["WIDTH"]) > 24:
            return TrialResult(TrialStatus.OOM, None, cost_s=2.0, wall_s=0.0, error="out of memory")
        loss = ((math.log10(config["LEARNING_RATE"]) + 2.5) ** 2 + (math.log2(config["WIDTH"]) - 7) ** 2 / 10
                + (config["LAYERS"] - 5) ** 2 / 20 + 1.0)
        return TrialResult(TrialStatus.OK, loss, cost_s=1.0, wall_s=0.0)

    def describe(self) -> str:
        return "A quadratic bowl with an out-of-memory corner. Objective: minimize val_bpb."


def _record_the_old_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write failures as studies did before 2026-12-07: COMPLETE, the penalty as value, no `penalty` attribute."""
    write = loop.write_result

    def old(study: optuna.Study, r: Any) -> None:
        if r.state == "FAIL" and "penalty" in r.user_attrs:
            attrs = {k: v for k, v in r.user_attrs.items() if k != "penalty"}
            r = dataclasses.replace(r, state="COMPLETE", value=r.user_attrs["penalty"], user_attrs=attrs)
        write(study, r)

    monkeypatch.setattr(loop, "write_result", old)


def _configs(study: optuna.Study) -> list[str]:
    return [json.dumps(t.user_attrs["config"], sort_keys=True) for t in study.get_trials()]


@pytest.mark.parametrize("method", ["random", "tpe", "tpe-optuna", "cmaes", "cmaes-optuna", "gp", "smac",
                                    "centaur-null", "ngopt", pytest.param("hebo", marks=pytest.mark.slow)])
def test_every_method_proposes_the_same_under_either_record(method: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip({"gp": "torch", "ngopt": "nevergrad", "hebo": "hebo"}.get(method, "optuna"))
    now = centaur.tune(BowlWithWall(), method=method, budget=None, n_trials=14, seed=3, run_dir=tmp_path / "new")
    with monkeypatch.context() as m:
        _record_the_old_way(m)
        before = centaur.tune(BowlWithWall(), method=method, budget=None, n_trials=14, seed=3,
                              run_dir=tmp_path / "old")
    new_trials, old_trials = now.study.get_trials(), before.study.get_trials()
    failed = [t for t in new_trials if t.user_attrs["status"] == "oom"]
    assert failed and len(failed) < len(new_trials), "the study needs failures and successes"
    # what was recorded differs as intended ...
    assert all(t.state == TrialState.FAIL and t.value is None and told_value(t) == PENALTY for t in failed)
    assert all(t.state == TrialState.COMPLETE and t.value == PENALTY for t in old_trials if is_failure(t))
    # ... and what the method proposed from it does not
    assert _configs(now.study) == _configs(before.study)
    assert summarize(now.study).failures == summarize(before.study).failures
    assert now.best_value == before.best_value


def _study_with_both_records() -> tuple[optuna.Study, optuna.Study]:
    """Two studies with the same trials: failures recorded FAIL with a told value, and the old way."""
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    records = [(0.2, "ok", 1.2), (0.9, "oom", None), (0.5, "ok", 1.05), (0.7, "lost", None), (0.95, "crash", None)]
    studies = []
    for old in (False, True):
        study = optuna.create_study()
        for x, status, value in records:
            failed = status in ("oom", "crash")
            attrs = {"status": status, **({"penalty": PENALTY} if failed and not old else {})}
            system = {"constraints:failed": 1.0 if failed else 0.0, "constraints": [1.0 if failed else 0.0]}
            if status == "lost":
                state, values, system = TrialState.FAIL, None, {}
            elif failed:
                state, values = (TrialState.COMPLETE, [PENALTY]) if old else (TrialState.FAIL, None)
            else:
                state, values = TrialState.COMPLETE, [value]
            study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"x": x}, distributions=dist,
                                                      user_attrs=attrs, system_attrs=system))
        studies.append(study)
    return studies[0], studies[1]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("states", [None, (TrialState.COMPLETE,), (TrialState.COMPLETE, TrialState.PRUNED)])
def test_the_view_shows_both_records_alike(form: str, states: Any) -> None:
    new, old = _study_with_both_records()

    def seen(study: optuna.Study) -> list[tuple[Any, ...]]:
        return [(t.number, t.state, t.values, t.params, t.constraints)
                for t in FailureView(study, form, {}).get_trials(deepcopy=False, states=states)]

    assert seen(new) == seen(old)
    shown = seen(new)
    assert [n for n, *_ in shown] == ([0, 1, 2, 3, 4] if states is None else [0, 1, 2, 4])  # a lost trial never ran
    if form in ("constraint", "worst"):
        assert [v for n, _, v, *_ in shown if n in (1, 4)] == [[1.2], [1.2]]  # the worst success
    else:
        assert [v for n, _, v, *_ in shown if n in (1, 4)] == [[PENALTY], [PENALTY]]


def test_a_method_is_told_a_failure_as_it_reads_it() -> None:
    class Spy(optuna.samplers.RandomSampler):
        told: list[tuple[TrialState, Any]] = []

        def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Any) -> None:
            self.told.append((state, values))

    from centaur.methods.failures import told_through_view

    sampler = told_through_view(Spy(seed=0), "spy")
    study = optuna.create_study(sampler=sampler)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    trial.set_user_attr("status", "oom")
    trial.set_user_attr("penalty", PENALTY)
    study.tell(trial, state=TrialState.FAIL)
    lost = study.ask()
    lost.set_user_attr("status", "lost")
    study.tell(lost, state=TrialState.FAIL)
    assert Spy.told == [(TrialState.COMPLETE, [PENALTY]), (TrialState.FAIL, None)]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]  # the record is FAIL
