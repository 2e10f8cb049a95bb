"""`gp -o warp=copula`: the GP reads rank-warped values; the study's record and its best trial do not change."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from centaur.methods.base import MethodError
from centaur.methods.value_warp import CopulaView, copula_values
from centaur.samplers import create


def test_copula_values_keep_the_order_and_bound_an_outlier() -> None:
    values = [0.975, 0.98, 0.99, 1.0, 5.0]
    warped = copula_values(values)
    assert warped == sorted(warped)
    # The outlier 5.0 is one rank above 1.0, not 4 units: its gap is the same as between other ranks' quantiles.
    assert warped[4] - warped[3] == pytest.approx(warped[1] - warped[0])
    assert math.isclose(sum(warped), 0.0, abs_tol=1e-12)  # symmetric quantiles of the mid-ranks
    assert copula_values([1.0, 1.0, 2.0])[0] == copula_values([1.0, 1.0, 2.0])[1]  # ties share a value


def test_view_warps_finished_values_only_and_leaves_the_record() -> None:
    study = optuna.create_study()
    for x in (3.0, 1.0, 100.0):
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={
            "x": optuna.distributions.FloatDistribution(0, 200)}, value=x))
    study.enqueue_trial({"x": 2.0})
    running = study.ask()  # a running trial: no value to warp
    seen = CopulaView(study).get_trials(deepcopy=False)
    done = [t for t in seen if t.state == TrialState.COMPLETE]
    assert [t.params["x"] for t in done] == [3.0, 1.0, 100.0]
    assert [round(t.value, 6) for t in done] == [round(v, 6) for v in copula_values([3.0, 1.0, 100.0])]
    assert [t.state for t in seen if t.number == running.number] == [TrialState.RUNNING]
    # Asked for COMPLETE only, ranks are still among every finished value.
    only = CopulaView(study).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.value for t in only] == [t.value for t in done]
    assert [t.value for t in study.get_trials(states=(TrialState.COMPLETE,))] == [3.0, 1.0, 100.0]


def test_gp_with_copula_finds_the_optimum_beside_an_outlier_and_refuses_an_unknown_warp() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        return (x - 1) ** 2 + (1000.0 if trial.suggest_float("y", 0, 1) > 0.9 else 0.0)

    study = optuna.create_study(sampler=create("gp", seed=0, warp="copula", n_startup_trials=5))
    study.optimize(objective, n_trials=25)
    assert study.best_value < 0.05
    for t in study.trials:  # the record keeps the raw values
        assert t.value == (t.params["x"] - 1) ** 2 + (1000.0 if t.params["y"] > 0.9 else 0.0)
    with pytest.raises(MethodError, match="warp='log'"):
        create("gp", seed=0, warp="log")
