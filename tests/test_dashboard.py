"""A `centaur tune` study as users look at it: failed trials are failures in optuna-dashboard's API, in
Optuna's own plots and in `trials_dataframe()`, with no penalty among the values, while every method still
reads the study as before (methods/failures.py); a power of two is shown in the script's units beside its
exponent."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

import centaur
from centaur.methods.failures import FailureView

SCRIPT = '''
LEARNING_RATE = 0.01
LAYERS = 3
WIDTH = 64
if LAYERS % 2 == 0:  # even depths run out of memory
    raise MemoryError("cannot allocate")
print("---")
print(f"val_bpb: {1.0 + (LAYERS - 5) ** 2 / 20 + abs(LEARNING_RATE - 0.01):.6f}")
print("training_seconds: 1.0")
'''


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    work = tmp_path_factory.mktemp("dashboard")
    script = work / "train.py"
    script.write_text(SCRIPT)
    (work / "centaur.toml").write_text("[space.params.LAYERS]\ntype = 'int'\nlow = 1\nhigh = 8\n"
                                       "[space.params.WIDTH]\ntype = 'pow2'\nlow = 16\nhigh = 256\n")
    result = centaur.tune(script, method="random", n_trials=6, seed=1, run_dir=work / "runs", keep_going=True)
    return result.study


def _dashboard_trials(study: optuna.Study) -> list[dict[str, Any]]:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    app = optuna_dashboard.wsgi(study._storage)
    environ: dict[str, Any] = {"PATH_INFO": f"/api/studies/{study._study_id}", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    answer: dict[str, Any] = {}
    body = b"".join(app(environ, lambda status, headers, exc_info=None: answer.update(status=status)))
    assert answer["status"].startswith("200"), body[:500]
    return json.load(io.BytesIO(body))["trials"]


def test_the_dashboard_shows_failed_trials_as_failures(study: optuna.Study) -> None:
    trials = {t["number"]: t for t in _dashboard_trials(study)}
    statuses = {t.number: t.user_attrs["status"] for t in study.trials}
    assert "oom" in statuses.values() and "ok" in statuses.values(), statuses  # both kinds ran
    for number, status in statuses.items():
        shown = trials[number]
        if status == "ok":
            assert shown["state"] == "Complete" and shown["constraints"] == [0.0]
            assert 1.0 <= shown["values"][0] < 3.0  # the real value
        else:  # a failure, with no value to stretch the history plot's axis
            assert shown["state"] == "Fail" and "values" not in shown, shown
    # Optuna's own plots and table read the same: only the successes carry values
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore")
        axes = optuna.visualization.matplotlib.plot_optimization_history(study)
    plotted = [float(y) for points in axes.collections for _, y in points.get_offsets()]
    assert plotted and max(plotted) < 3.0, plotted
    table = study.trials_dataframe()
    assert table[table.state == "FAIL"].value.isna().all() and (table.state == "FAIL").sum() == len(
        [s for s in statuses.values() if s != "ok"])
    assert study.best_trial.user_attrs["status"] == "ok"


@pytest.mark.parametrize("form", ["penalty", "constraint", "worst"])
def test_samplers_do_not_see_the_dashboard_copy(study: optuna.Study, form: str) -> None:
    view = FailureView(study, form, {})
    for t in view.get_trials(deepcopy=False):
        assert "constraints" not in t.system_attrs  # the list copy is gone in every form
        assert len(t.constraints) == (1 if form == "constraint" else 0)


def test_a_users_own_constraint_list_is_left_alone() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    x = optuna.distributions.FloatDistribution(0, 1)
    mine = {"constraints": [0.3, -1.0]}  # a plain Optuna program's constraints_func record
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": x}, value=1.0, system_attrs=mine))
    for form in ("penalty", "constraint", "worst"):
        (t,) = FailureView(study, form, {}).get_trials()
        assert t.system_attrs["constraints"] == [0.3, -1.0]


def test_powers_of_two_are_shown_in_the_scripts_units(study: optuna.Study) -> None:
    frame = study.trials_dataframe()
    assert (frame["user_attrs_WIDTH"] == 2 ** frame["params_log2(WIDTH)"]).all()
    assert frame["user_attrs_WIDTH"].iloc[0] == 64  # the baseline: the script's own value
    for t in _dashboard_trials(study):
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        (exponent,) = [p["param_external_value"] for p in t["params"] if p["name"] == "log2(WIDTH)"]
        assert attrs["WIDTH"] == str(2 ** int(exponent))
    assert "user_attrs_LAYERS" not in frame.columns  # the same units as its parameter: no copy


def test_the_search_space_attribute_is_one_entry_per_parameter(study: optuna.Study) -> None:
    space = study.user_attrs["space"]
    assert isinstance(space, dict) and space["WIDTH"] == "power of two, one of [16, 32, 64, 128, 256], default 64"
    assert space["LAYERS"] == "int in [1, 8], default 3" and "LEARNING_RATE" in space
