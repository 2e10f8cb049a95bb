"""centaur.samplers in plain Optuna programs: generic sampler checks (in the spirit of Optuna's own
sampler tests: every distribution kind inside its bounds, `sample_relative` on the space it is given,
conditional and dynamic spaces, enqueued trials, multi-objective refusal, threads, reseeding, pickling)
for every method usable as a sampler, the direction honoured, SMAC's temporary files removed, and the
README's example run as written. The LLM methods talk to the scripted fake server."""

from __future__ import annotations

import glob
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_llm_server import FakeLLMServer
from method_packages import skip_without_package
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from centaur.llm import LLMSettings
from centaur.methods.base import MethodContext, MethodError, create_sampler
from centaur.samplers import MULTI_OBJECTIVE, Sampler, available, create, param_of, snap, space_of
from centaur.space import Param, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

README = Path(__file__).resolve().parents[1] / "README.md"
LLM_METHODS = {"centaur", "agent-hps"}
METHODS = ["random", "tpe", "tpe-optuna", pytest.param("gp", marks=pytest.mark.slow), "cmaes-optuna", "cmaes", "smac",
           "centaur", "agent-hps", "ngopt", pytest.param("hebo", marks=pytest.mark.slow)]
# gp and hebo fit a GP per trial (seconds each on two cores)


@pytest.fixture(scope="module")
def llm_server():
    with FakeLLMServer(responder=lambda body: {"content": "{}"}) as server:  # "{}": keys filled in
        yield server


@pytest.fixture
def make(llm_server):
    """make(method, **options) -> a public sampler; LLM methods get the fake server."""
    built: list[Sampler] = []

    def build(method: str, seed: int = 0, **options: Any) -> Sampler:
        skip_without_package(method)
        llm = None
        if method in LLM_METHODS:
            llm = LLMSettings(base_url=llm_server.base_url, model="fake-model", max_retries=0, timeout_s=5.0)
            options = {"llm_warmup": 2, **options} if method == "centaur" else options
        if method in ("tpe", "tpe-optuna", "gp"):
            options = {"n_startup_trials": 4, **options}
        sampler = create(method, seed=seed, llm=llm, **options)
        built.append(sampler)
        return sampler

    yield build
    for s in built:
        s.close()


DISTRIBUTIONS = {
    "f": FloatDistribution(-3.0, 5.0),
    "f_log": FloatDistribution(1e-4, 1.0, log=True),
    "f_step": FloatDistribution(0.0, 1.0, step=0.25),
    "i": IntDistribution(-2, 7),
    "i_log": IntDistribution(1, 64, log=True),
    "i_step": IntDistribution(0, 20, step=5),
    "c": CategoricalDistribution(["a", "b", "c"]),
    "c_num": CategoricalDistribution([1, 2.5, None]),
}


def _suggest_all(trial: optuna.Trial) -> float:
    value = 0.0
    for name, d in DISTRIBUTIONS.items():
        if isinstance(d, FloatDistribution):
            v = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            v = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        else:
            v = trial.suggest_categorical(name, d.choices)
            v = d.choices.index(v)
        value += (float(v) - 1.0) ** 2
    return value


def _inside(d: Any, v: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return v in d.choices
    if not d.low <= v <= d.high:
        return False
    if isinstance(d, IntDistribution) and not isinstance(v, int):
        return False
    return d.step is None or abs((v - d.low) / d.step - round((v - d.low) / d.step)) < 1e-8


# -- generic sampler checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_distribution_kind_is_sampled_inside_its_bounds(make, method):
    study = optuna.create_study(sampler=make(method))
    study.optimize(_suggest_all, n_trials=12)
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        for name, d in DISTRIBUTIONS.items():
            assert _inside(d, t.params[name]), (name, t.params[name])


@pytest.mark.parametrize("method", METHODS)
def test_sample_relative_samples_exactly_the_space_it_is_given(make, method):
    sampler = make(method)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("y", 0, 1) + t.suggest_int("k", 0, 3), n_trials=6)
    study.ask()
    frozen = study.get_trials(deepcopy=False)[-1]
    for space in ({"x": FloatDistribution(-10, 10)},
                  {"x": FloatDistribution(-10, 10), "n": IntDistribution(2, 9, step=7)},
                  {"y": FloatDistribution(0, 1), "k": IntDistribution(0, 3), "c": CategoricalDistribution([0, 1])}):
        params = sampler.sample_relative(study, frozen, space)
        assert set(params) <= set(space)
        assert all(_inside(space[k], v) for k, v in params.items()), params
    relative = sampler.infer_relative_search_space(study, frozen)
    assert set(relative) <= {"y", "k"}
    assert set(sampler.sample_relative(study, frozen, relative)) <= set(relative)


@pytest.mark.parametrize("method", METHODS)
def test_conditional_parameters(make, method):
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        if trial.suggest_categorical("branch", ["deep", "shallow"]) == "deep":
            return (x - 1) ** 2 + trial.suggest_int("depth", 1, 8) * 0.1
        return (x - 1) ** 2 + trial.suggest_float("width", 0.1, 1.0, log=True)

    study = optuna.create_study(sampler=make(method))
    study.optimize(objective, n_trials=16)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(("depth" in t.params) == (t.params["branch"] == "deep") for t in trials)


@pytest.mark.parametrize("method", METHODS)
def test_dynamic_space(make, method):
    def objective(trial: optuna.Trial) -> float:
        n = trial.number % 3 + 1
        return sum(trial.suggest_float(f"x{i}", -1, 1) ** 2 for i in range(n)) + trial.suggest_float("common", 0, 1)

    study = optuna.create_study(sampler=make(method))
    study.optimize(objective, n_trials=12)
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    assert [len(t.params) for t in study.get_trials()[:3]] == [2, 3, 4]


@pytest.mark.parametrize("method", METHODS)
def test_enqueued_trials_run_with_their_fixed_params(make, method):
    study = optuna.create_study(sampler=make(method))
    study.enqueue_trial({"x": 1.5, "k": 2})
    study.optimize(lambda t: t.suggest_float("x", 0, 3) + t.suggest_int("k", 0, 4), n_trials=3)
    study.enqueue_trial({"x": 0.25})  # a partial point after others ran: k is sampled
    study.optimize(lambda t: t.suggest_float("x", 0, 3) + t.suggest_int("k", 0, 4), n_trials=6)
    trials = study.get_trials()
    assert trials[0].params == {"x": 1.5, "k": 2}
    assert trials[3].params["x"] == 0.25 and 0 <= trials[3].params["k"] <= 4
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("method", METHODS)
def test_multi_objective(make, method):
    sampler = make(method)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(t: optuna.Trial) -> tuple[float, float]:
        x = t.suggest_float("x", 0, 1)
        return x, 1 - x

    if method in MULTI_OBJECTIVE:
        study.optimize(objective, n_trials=6)
        assert len(study.best_trials) >= 1
        return
    with pytest.raises(ValueError, match=rf"{re.escape(method)}.*single-objective"):
        study.optimize(objective, n_trials=1)
    frozen = study.get_trials(deepcopy=False)[-1]  # the trial the refusal stopped
    for call in (lambda: sampler.infer_relative_search_space(study, frozen),
                 lambda: sampler.sample_relative(study, frozen, {"x": FloatDistribution(0, 1)}),
                 lambda: sampler.sample_independent(study, frozen, "x", FloatDistribution(0, 1))):
        with pytest.raises(ValueError, match="single-objective"):
            call()
    assert not any(t.state == TrialState.COMPLETE for t in study.get_trials())


@pytest.mark.parametrize("method", METHODS)
def test_two_threads(make, method):
    study = optuna.create_study(sampler=make(method))
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2 + t.suggest_int("k", 0, 3), n_trials=14, n_jobs=2)
    trials = study.get_trials()
    assert len(trials) == 14 and all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("method", METHODS)
def test_reseed_and_pickle(make, method):
    sampler = make(method)
    sampler.reseed_rng()
    study = optuna.create_study(sampler=sampler)
    objective = lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2  # noqa: E731
    study.optimize(objective, n_trials=5)
    copy = pickle.loads(pickle.dumps(sampler))
    assert isinstance(copy, Sampler) and copy.method == method
    again = optuna.load_study(study_name=study.study_name, storage=study._storage, sampler=copy)
    again.optimize(objective, n_trials=5)
    assert len(again.get_trials()) == 10 and all(t.state == TrialState.COMPLETE for t in again.get_trials())
    copy.close()


def test_same_seed_same_trials(make):
    def run() -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=make("cmaes", seed=3))
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("k", 0, 5), n_trials=10)
        return [t.params for t in study.get_trials()]

    assert run() == run()


# -- "done when": a plain Optuna program, both directions, conditional, two threads --------------------
DONE_WHEN = ["cmaes", "tpe", pytest.param("smac", marks=pytest.mark.slow), "centaur"]


@pytest.mark.parametrize("method", DONE_WHEN)
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_plain_optuna_program_finds_the_optimum_in_either_direction(make, method, direction):
    sign = -1.0 if direction == "maximize" else 1.0  # maximise -(x-2)^2, or minimise (x-2)^2

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        if trial.suggest_categorical("extra", [False, True]):  # a conditional parameter
            x += trial.suggest_float("shift", 0.0, 0.5) * 0.0
        return sign * (x - 2) ** 2

    study = optuna.create_study(direction=direction, sampler=make(method))
    # 60 trials, judged on the last 20: with two threads the order in which trials finish varies from run
    # to run. Judged on the last 10 of 40, TPE's median passed 10 in about 6 runs of 200 (one CI run hit
    # it); on the last 20 of 60 its worst median over 200 seeds was 4.0.
    study.optimize(objective, n_trials=60, n_jobs=2 if direction == "minimize" else 1)
    values = [t.value for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(values) == 60
    assert abs(study.best_value) < 0.5
    # Learning, not random search and not backwards: the last trials lie near the optimum. A backwards
    # optimiser drives x to the far end of the range ((x-2)^2 near 144), random search has a median near 25.
    last = sorted(sign * v for v in values[-20:])
    assert last[len(last) // 2] < 10.0, last  # random search: a median near 25


def test_maximising_cmaes_and_smac_internals_read_the_direction():
    """The samplers themselves (as `centaur tune` builds them, with a SearchSpace) honour the direction."""
    space = SearchSpace((Param("x", "float", 0.0, low=-10.0, high=10.0),))
    for name in ("cmaes", "smac"):
        if name == "smac":
            pytest.importorskip("smac")
        sampler = create_sampler(name, MethodContext(space=space, seed=0))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda t: -((t.suggest_float("x", -10, 10) - 2) ** 2), n_trials=30)
        last = sorted(-t.value for t in study.get_trials()[-10:])
        assert study.best_value > -0.5 and last[5] < 5.0, (name, last)
        getattr(sampler, "close", lambda: None)()


# -- the fixed-space samplers of `centaur tune` ---------------------------------------------------------
def test_fixed_space_cmaes_survives_trials_missing_a_parameter():
    space = SearchSpace((Param("x", "float", 0.5, low=0.0, high=1.0), Param("y", "int", 2, low=0, high=4)))
    sampler = create_sampler("cmaes", MethodContext(space=space, seed=0, options={"popsize": 4}))
    study = optuna.create_study(sampler=sampler)

    def objective(t: optuna.Trial) -> float:
        x = t.suggest_float("x", 0.0, 1.0)
        return x + (t.suggest_int("y", 0, 4) if t.number % 3 else 0)

    study.optimize(objective, n_trials=16)
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())


def test_smac_is_told_only_what_ran():
    pytest.importorskip("smac")
    space = SearchSpace((Param("x", "float", 5.0, low=0.0, high=10.0), Param("k", "int", 1, low=0, high=3)))
    sampler = create_sampler("smac", MethodContext(space=space, seed=0, options={"n_init": 3}))
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0) + t.suggest_int("k", 0, 3), n_trials=8)  # narrower x
    study.ask()
    sampler.sample_relative(study, study.get_trials()[-1], space.distributions())  # tells the last finished one
    from smac.runhistory import StatusType

    history = sampler._smac.runhistory  # asked-but-not-run proposals stay RUNNING there: not learned from
    told = [dict(history.get_config(k.config_id)) for k, v in history.items() if v.status != StatusType.RUNNING]
    ran = [t.params for t in study.get_trials()[:8]]
    assert len(told) == 8 and all(0.0 <= c["x"] <= 1.0 for c in told)
    assert sorted((round(c["x"], 9), c["k"]) for c in told) == sorted((round(p["x"], 9), p["k"]) for p in ran)
    sampler.close()


def test_smac_leaves_no_temporary_folder(make):
    pytest.importorskip("smac")
    pattern = os.path.join(tempfile.gettempdir(), "centaur-smac-*")
    before = set(glob.glob(pattern))
    with create("smac", seed=0) as sampler:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        assert set(glob.glob(pattern)) - before  # SMAC's run history is there while the sampler works
    assert set(glob.glob(pattern)) - before == set()
    sampler = create_sampler("smac", MethodContext(space=space_of({"x": FloatDistribution(0, 1)})))
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    del sampler, study  # never closed: removed when collected
    import gc

    gc.collect()
    assert set(glob.glob(pattern)) - before == set()


def test_llm_methods_refuse_an_empty_space_and_unknown_names_are_refused():
    for name in ("agent-hps", "llambo", "llambo-hub", "centaur", "cmaes", "smac"):
        with pytest.raises(MethodError):
            create_sampler(name, MethodContext())
    with pytest.raises(MethodError, match="unknown method"):
        create("no-such-method")
    with pytest.raises(MethodError, match="own loop"):
        create("agent-code")
    assert {"cmaes", "smac", "centaur", "tpe"} <= set(available()) and "agent-code" not in available()


def test_distributions_convert_to_params():
    assert param_of("lr", FloatDistribution(1e-4, 1.0, log=True)).log
    p = param_of("n", IntDistribution(2, 32, log=True))
    assert p.kind == "int" and p.log and p.contains(p.default) and p.default == 8
    assert param_of("c", CategoricalDistribution(["x", "y"])).choices == ("x", "y")
    assert snap(0.61, FloatDistribution(0.0, 1.0, step=0.25)) == 0.5
    assert snap(13.2, IntDistribution(0, 20, step=5)) == 15 and snap(99, IntDistribution(0, 20, step=5)) == 20
    assert space_of({"b": FloatDistribution(0, 1), "a": IntDistribution(0, 1)}).names == ["a", "b"]
    assert math.isclose(param_of("f", FloatDistribution(-1.0, 3.0)).default, 1.0)


def test_readme_example_runs():
    match = re.search(r"<!-- readme-example: samplers -->\s*\n```python\n(.*?)\n```", README.read_text(), re.DOTALL)
    assert match, "README.md: the samplers example block is missing"
    scope: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), scope)
    assert scope["study"].best_value > -0.5 and len(scope["study"].trials) == 40
