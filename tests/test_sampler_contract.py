"""Optuna's sampler contract, held by every method of centaur.samplers (our own checks of the ideas behind
Optuna's generic sampler tests):

- `reseed_rng()` changes what later trials draw, while a study resumed by a new sampler with the same seed
  draws exactly what an uninterrupted one does;
- `sample_relative` given a categorical-only or a mixed space returns a value for every parameter, inside
  its distribution and as a plain Python value, for every method (CMA-ES models the categoricals);
- `cmaes-optuna` hands categoricals to Optuna's CmaEsSampler instead of dropping them.

The LLM methods talk to the scripted fake server: its "{}" answers leave every value to the method."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
from fake_llm_server import FakeLLMServer
from method_packages import skip_without_package
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from centaur.llm import LLMSettings
from centaur.samplers import Sampler, available, create

optuna.logging.set_verbosity(optuna.logging.WARNING)

LLM_METHODS = {"centaur", "agent-hps", "llambo", "llambo-hub"}
SLOW = {"gp", "hebo"}  # a GP fit per trial: seconds each on two cores
METHODS = [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in sorted(available())]


def test_every_sampler_method_is_checked():
    assert {"random", "tpe", "tpe-optuna", "gp", "cmaes-optuna", "cmaes", "smac", "centaur", "centaur-null",
            "agent-hps", "llambo", "llambo-hub", "ngopt", "hebo"} <= set(available())


@pytest.fixture(scope="module")
def llm_server():
    with FakeLLMServer(responder=lambda body: {"content": "{}"}) as server:
        yield server


@pytest.fixture
def make(llm_server):
    built: list[Sampler] = []

    def build(method: str, seed: int = 0) -> Sampler:
        skip_without_package(method)
        options: dict[str, Any] = {}
        llm = None
        if method in LLM_METHODS:
            llm = LLMSettings(base_url=llm_server.base_url, model="fake-model", max_retries=0, timeout_s=5.0)
        if method in ("centaur", "centaur-null"):
            options["llm_warmup"] = 1
        if method in ("tpe", "tpe-optuna", "gp"):
            options["n_startup_trials"] = 2
        if method == "llambo":
            options["n_candidates"] = 2
        sampler = create(method, seed=seed, llm=llm, **options)
        built.append(sampler)
        return sampler

    yield build
    for s in built:
        s.close()


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -4.0, 4.0)
    k = trial.suggest_int("k", 0, 6)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    return (x - 1.0) ** 2 + abs(k - 2) + (0.0 if c == "b" else 1.0)


def _llm_seeds(server: FakeLLMServer, start: int) -> list[Any]:
    return [r["body"].get("seed") for r in server.chat_requests()[start:]]


# -- reseed_rng ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_reseed_rng_changes_later_draws(make, llm_server, method):
    def run(reseed: bool) -> tuple[list[dict[str, Any]], list[Any]]:
        sampler = make(method, seed=7)
        study = optuna.create_study(sampler=sampler)
        study.optimize(_objective, n_trials=4)
        if reseed:
            sampler.reseed_rng()
        first_request = len(llm_server.chat_requests())
        study.optimize(_objective, n_trials=4)
        return [t.params for t in study.trials], _llm_seeds(llm_server, first_request)

    plain, plain_seeds = run(reseed=False)
    again, again_seeds = run(reseed=False)
    reseeded, reseeded_seeds = run(reseed=True)
    assert plain == again and plain_seeds == again_seeds  # the seed alone decides every draw
    assert reseeded[:4] == plain[:4]
    # Later draws change: the parameters, or for an LLM method whose fake answers carry no randomness, the
    # seed it sends with each request (a real model samples with it).
    assert reseeded[4:] != plain[4:] or (method in LLM_METHODS and reseeded_seeds != plain_seeds)


# State kept in memory and rebuilt from the study on resume (ngopt's optimizer and its stream; the kernel
# parameters Optuna's GPSampler starts each fit from): a resumed study is reproducible, but not exactly the
# uninterrupted one's continuation.
REBUILT = {"ngopt", "gp"}


@pytest.mark.parametrize("method", METHODS)
def test_a_study_resumed_with_the_same_seed_is_reproducible(make, method):
    storage = optuna.storages.InMemoryStorage()
    whole = optuna.create_study(sampler=make(method, seed=3), storage=storage, study_name="whole")
    whole.optimize(_objective, n_trials=8)
    resumed = []
    for name in ("resumed", "resumed-again"):
        optuna.create_study(sampler=make(method, seed=3), storage=storage, study_name=name).optimize(
            _objective, n_trials=4)
        other = make(method, seed=3)
        other.reseed_rng()  # a reseed elsewhere in the program leaves new samplers on the user's seed
        study = optuna.load_study(study_name=name, storage=storage, sampler=make(method, seed=3))
        study.optimize(_objective, n_trials=4)
        resumed.append([t.params for t in study.trials])
    assert resumed[0] == resumed[1]
    assert resumed[0][4:] != resumed[0][:4]  # the resumed trials are new draws, not a replay
    if method not in REBUILT:
        assert resumed[0] == [t.params for t in whole.trials]


# -- sample_relative on categorical-only and mixed spaces ---------------------------------------------------
SPACES = {
    "categorical": {"a": CategoricalDistribution([1, 10, 100]), "b": CategoricalDistribution(["u", "v", "w"])},
    "mixed-float": {"x": FloatDistribution(1e-3, 1.0, log=True), "b": CategoricalDistribution(["u", "v", "w"])},
    "mixed-int": {"n": IntDistribution(2, 12, step=2), "a": CategoricalDistribution([1, 10, 100])},
}


def _new_trial(study: optuna.Study) -> FrozenTrial:
    study.ask()  # a fresh running trial, as Optuna's generic tests make them
    return study.get_trials(deepcopy=False)[-1]


def _plain(value: Any, dist: BaseDistribution) -> bool:
    if isinstance(value, (np.generic, np.ndarray)):
        return False
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices and type(value) is type(dist.choices[dist.choices.index(value)])
    if isinstance(dist, IntDistribution):
        return isinstance(value, int) and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
    return isinstance(value, float) and dist.low <= value <= dist.high


@pytest.mark.parametrize("space_name", list(SPACES))
@pytest.mark.parametrize("method", METHODS)
def test_sample_relative_samples_every_parameter_of_categorical_and_mixed_spaces(make, method, space_name):
    space = SPACES[space_name]
    sampler = make(method)
    study = optuna.create_study(sampler=sampler)
    first = study.ask(space)
    study.tell(first, float(sum(space[k].to_internal_repr(v) for k, v in first.params.items())))
    for _ in range(8):
        params = sampler.sample_relative(study, _new_trial(study), space)
        assert set(params) == set(space), params
        assert all(_plain(v, space[k]) for k, v in params.items()), params


def test_cmaes_models_a_categorical_only_space():
    """Not random draws: CMA-ES's categorical distribution moves to the best choices."""
    target = {"a": "p", "b": "s", "c": "q", "d": "r"}
    choices = ["p", "q", "r", "s"]

    def objective(t: optuna.Trial) -> float:
        return float(sum(t.suggest_categorical(k, choices) != v for k, v in target.items()))

    means = []
    for seed in range(3):
        study = optuna.create_study(sampler=create("cmaes", seed=seed, popsize=6))
        study.optimize(objective, n_trials=72)
        means.append(np.mean([t.value for t in study.trials[-12:]]))
    # random draws average 3 mismatches of 4; CMA-ES's last two generations sit far below it
    assert np.mean(means) < 1.5, means


@pytest.mark.parametrize("space_name", ["categorical", "mixed-float"])
def test_cmaes_optuna_gives_categoricals_to_optunas_cmaes(make, space_name):
    space = SPACES[space_name]
    sampler = make("cmaes-optuna")
    study = optuna.create_study(sampler=sampler)
    first = study.ask(space)
    study.tell(first, 1.0)
    trial = _new_trial(study)
    params = sampler.sample_relative(study, trial, space)
    assert set(params) == set(space)
    (after,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
    assert any(key.endswith("generation") for key in after.system_attrs), after.system_attrs  # CMA-ES drew them
