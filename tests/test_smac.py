"""The `smac` method: SMAC3 driven through ask/tell from an Optuna sampler, with its state rebuilt
from the study (resume, parallel workers), exact space mapping and failures told with the penalty."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

pytest.importorskip("smac")

import centaur  # noqa: E402
from centaur.cli import app  # noqa: E402
from centaur.methods.base import MethodContext, MethodError, create_sampler  # noqa: E402
from centaur.methods.smac_sampler import ORIGIN_ATTR, PROPOSAL_ATTR, SmacSampler, configspace_of, configuration_of  # noqa: E402
from centaur.space import Param, SearchSpace, reference_space  # noqa: E402

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _configs(result: centaur.TuneResult) -> list[dict]:
    return [t.user_attrs["config"] for t in result.study.get_trials()]


def _origins(study: optuna.Study) -> list[str | None]:
    return [t.system_attrs.get(ORIGIN_ATTR) for t in study.get_trials()]


def _small_space() -> SearchSpace:
    return SearchSpace(
        (
            Param("LR", "float", 0.01, low=1e-4, high=1.0, log=True),
            Param("WD", "float", 0.1, low=0.0, high=0.5),
            Param("WIDTH", "pow2", 64, low=16, high=1024),
            Param("LAYERS", "int", 3, low=1, high=8),
            Param("ACT", "categorical", "relu", choices=("relu", "gelu", "tanh")),
        )
    )


def _objective(config: dict) -> float:
    act = {"relu": 0.3, "gelu": 0.0, "tanh": 0.6}[config["ACT"]]
    return (
        (math.log10(config["LR"]) + 2.5) ** 2
        + (config["WD"] - 0.3) ** 2 * 4
        + (math.log2(config["WIDTH"]) - 7) ** 2 / 10
        + (config["LAYERS"] - 5) ** 2 / 20
        + act
        + 1.0
    )


def _run(study: optuna.Study, space: SearchSpace, n: int, fail=lambda c: False, penalty: float = 100.0) -> None:
    """A minimal study loop: failures are recorded as the study loop records them (FAIL, class, told value)."""
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        if fail(config):
            trial.set_user_attr("status", "oom")
            trial.set_user_attr("penalty", penalty)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            trial.set_user_attr("status", "ok")
            study.tell(trial, _objective(config))


def _sampler(space: SearchSpace, seed: int = 0, **opts) -> SmacSampler:
    return create_sampler("smac", MethodContext(space=space, seed=seed, options=opts))


def test_configspace_maps_the_space_exactly() -> None:
    space = reference_space()
    cs = configspace_of(space)
    assert sorted(cs.keys()) == sorted(space.distributions())
    hp = cs["log2(TOTAL_BATCH_SIZE)"]  # pow2: the integer exponent, as in Optuna
    assert (hp.lower, hp.upper, hp.default_value) == (16, 21, 19)
    assert cs["EMBEDDING_LR"].log and not cs["WEIGHT_DECAY"].log
    assert list(cs["WINDOW_PATTERN"].choices) == list(space["WINDOW_PATTERN"].choices)
    rng = optuna.samplers.RandomSampler(seed=1)
    tmp = optuna.create_study(sampler=rng)
    for _ in range(20):  # every Optuna point is a SMAC configuration modelled at exactly its values
        params = tmp.ask(space.distributions()).params
        config = configuration_of(cs, space, params)
        for key, value in params.items():
            modelled = cs[key].to_value(config.get_array()[cs.index_of[key]])
            assert modelled == (pytest.approx(value, rel=1e-14, abs=0) if isinstance(value, float) else value)
            assert config[key] == (round(value, 13) if isinstance(value, float) else value)
    assert configuration_of(cs, space, dict(params, DEPTH=99)) is None
    assert dict(cs.get_default_configuration()) == space.encode(space.defaults())


@pytest.mark.slow
def test_same_seed_same_sequence(tmp_path: Path) -> None:
    opts = {"n_init": 3}
    a = centaur.tune(QUAD, method="smac", budget="6s", run_dir=tmp_path / "a", method_options=opts)
    b = centaur.tune(QUAD, method="smac", budget="6s", run_dir=tmp_path / "b", method_options=opts)
    c = centaur.tune(QUAD, method="smac", budget="3s", seed=1, run_dir=tmp_path / "c", method_options=opts)
    assert _configs(a) == _configs(b)
    assert _configs(a)[1:3] != _configs(c)[1:3]  # another seed, another Sobol design
    origins = _origins(a.study)
    assert origins[0] is None  # the baseline is enqueued, not asked
    # n_init counts the baseline: two Sobol points, then the forest
    assert all("Sobol" in o for o in origins[1:3]) and all("Sobol" not in o for o in origins[3:])
    keys = [tuple(sorted(c.items())) for c in _configs(a)]
    assert len(set(keys)) == len(keys)  # one evaluation per configuration
    assert (tmp_path / "a" / "quadratic-smac-seed0" / "smac").is_dir()  # SMAC's files in the run dir


def _study(path: Path, sampler: SmacSampler) -> optuna.Study:
    study = optuna.create_study(
        storage=f"sqlite:///{path}", study_name="s", sampler=sampler, load_if_exists=True, direction="minimize"
    )
    return study


@pytest.mark.slow
def test_resume_continues_the_initial_design_and_tells_every_old_trial(tmp_path: Path) -> None:
    space = _small_space()
    straight = _study(tmp_path / "a.db", _sampler(space, n_init=6))
    straight.enqueue_trial(space.encode(space.defaults()))
    _run(straight, space, 9)

    first = _sampler(space, n_init=6)
    interrupted = _study(tmp_path / "b.db", first)
    interrupted.enqueue_trial(space.encode(space.defaults()))
    _run(interrupted, space, 4)  # baseline + 3 of the 6 design points
    first.close()
    second = _sampler(space, n_init=6)  # a new process: nothing but the study
    resumed = _study(tmp_path / "b.db", second)
    _run(resumed, space, 5)

    params = lambda s: [t.params for t in s.get_trials()]  # noqa: E731
    # The resumed run went on with design points 4..6, exactly as the run that was never stopped.
    assert params(resumed)[:7] == params(straight)[:7]
    assert _origins(resumed)[4:7] == _origins(straight)[4:7]
    assert all("Sobol" not in o for o in _origins(resumed)[7:])
    # SMAC saw every old trial (the baseline included) with its real value.
    from smac.runhistory import StatusType

    rh = second._smac.runhistory
    told = [key for key, value in rh.items() if value.status != StatusType.RUNNING]
    finished = resumed.get_trials()[:-1]  # the last trial's result is told at the next suggestion
    assert len(told) == len(finished) == 8
    for t in finished:
        assert rh.get_cost(second._config(t.params)) == pytest.approx(t.value)
    keys = [tuple(sorted(p.items())) for p in params(resumed)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("record", ["fail", "complete"])  # as the study loop records failures; as it did
def test_failures_are_told_with_the_penalty_and_their_class(tmp_path: Path, record: str) -> None:
    from smac.runhistory import StatusType

    space = _small_space()
    sampler = create_sampler("smac", MethodContext(space=space, seed=0, options={"n_init": 2}, penalty=7.0))
    study = _study(tmp_path / "f.db", sampler)
    dists = space.distributions()
    for i, status in enumerate(("oom", "timeout", "crash", "diverged", "ok")):
        config = dict(space.defaults(), LAYERS=i + 1)
        failed_now = status != "ok" and record == "fail"
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL if failed_now else optuna.trial.TrialState.COMPLETE,
                params=space.encode(config),
                distributions=dists,
                value=None if failed_now else 100.0 if status != "ok" else 1.5,
                user_attrs={"status": status, **({"penalty": 100.0} if failed_now else {})},
            )
        )
    space.suggest(study.ask())  # the sampler syncs before it asks
    rh = sampler._smac.runhistory
    seen = {}
    for key, value in rh.items():
        if value.status == StatusType.RUNNING:
            continue  # the configuration just asked for
        layers = rh.get_config(key.config_id)["LAYERS"]
        seen[layers] = (value.status, value.cost)
    assert seen[1] == (StatusType.MEMORYOUT, 7.0)
    assert seen[2] == (StatusType.TIMEOUT, 7.0)
    assert seen[3] == (StatusType.CRASHED, 7.0) and seen[4] == (StatusType.CRASHED, 7.0)
    assert seen[5] == (StatusType.SUCCESS, 1.5)


def test_parallel_workers_do_not_propose_a_running_configuration(tmp_path: Path) -> None:
    space = _small_space()
    a = _study(tmp_path / "p.db", _sampler(space, n_init=4))
    b = _study(tmp_path / "p.db", _sampler(space, n_init=4))  # a second worker, same seed, own SMAC
    ta = a.ask()
    config_a = space.suggest(ta)
    tb = b.ask()  # worker b's SMAC also starts at design point 1, which worker a is running
    config_b = space.suggest(tb)
    assert config_a != config_b
    assert b.trials[tb.number].system_attrs[ORIGIN_ATTR].startswith("Initial")
    a.tell(ta, _objective(config_a))
    b.tell(tb, _objective(config_b))
    tc = a.ask()
    space.suggest(tc)
    assert len(a._storage.get_all_trials(a._study_id)) == 3
    assert len(a.sampler._smac.runhistory) >= 2  # worker a was told worker b's result


def test_a_claim_by_an_earlier_trial_wins(tmp_path: Path) -> None:
    space = _small_space()
    sampler = _sampler(space)
    study = _study(tmp_path / "c.db", sampler)
    first, second, third = study.ask(), study.ask(), study.ask()  # three workers sampling at once
    proposal = space.encode(dict(space.defaults(), LAYERS=6))
    frozen = lambda t: study._storage.get_trial(t._trial_id)  # noqa: E731
    study._storage.set_trial_system_attr(third._trial_id, PROPOSAL_ATTR, proposal)
    assert not sampler._taken(study, frozen(second), proposal)  # a later trial still sampling yields to us
    study._storage.set_trial_system_attr(first._trial_id, PROPOSAL_ATTR, proposal)
    assert sampler._taken(study, frozen(second), proposal)  # an earlier claim wins
    assert not sampler._taken(study, frozen(second), dict(proposal, LAYERS=5))


@pytest.mark.slow
def test_parallel_workers_never_run_a_configuration_twice(tmp_path: Path) -> None:
    r = centaur.tune(QUAD, method="smac", budget="10s", workers=2, run_dir=tmp_path, method_options={"n_init": 5})
    trials = r.study.get_trials()
    keys = [tuple(sorted(t.params.items())) for t in trials]
    assert len(trials) >= 10 and len(set(keys)) == len(keys)
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 2
    # One Sobol design shared by both workers (5 points when a worker started while the baseline ran).
    assert sum("Sobol" in (o or "") for o in _origins(r.study)) in (4, 5)


@pytest.mark.slow
def test_smac_beats_random_search_on_a_cheap_function(tmp_path: Path) -> None:
    space = _small_space()
    n = 26
    best = {"smac": [], "random": []}
    model_trials = model_failed = 0
    fail = lambda c: c["LAYERS"] >= 7  # noqa: E731  (a quarter of the space fails)
    for seed in (0, 1):
        s = optuna.create_study(sampler=_sampler(space, seed, n_init=6))
        _run(s, space, n, fail=fail)
        r = optuna.create_study(sampler=create_sampler("random", MethodContext(space=space, seed=seed)))
        _run(r, space, n, fail=fail)
        best["smac"].append(s.best_value)
        best["random"].append(r.best_value)
        for t in s.trials:
            if t.system_attrs[ORIGIN_ATTR].startswith("Acquisition"):
                model_trials += 1
                model_failed += t.user_attrs["status"] == "oom"
    assert np.mean(best["smac"]) < np.mean(best["random"])
    # The penalty taught the forest where trials fail: its own proposals rarely go there
    # (SMAC's 20% random interleaving still does, by design).
    assert model_trials >= 24 and model_failed / model_trials < 0.125


@pytest.mark.slow
def test_cli_tune_with_smac_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        app, ["tune", str(QUAD), "-m", "smac", "--budget", "5s", "-o", "n_init=2", "--run-dir", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "5 trials" in res.output and "budget spent" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # SMAC wrote nothing into the cwd
    assert list((tmp_path / "r" / "quadratic-smac-seed0" / "smac").rglob("runhistory.json"))
    res = CliRunner().invoke(app, ["tune", str(QUAD), "-m", "smac", "-o", "bogus=1", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown option" in res.output


def test_an_exhausted_discrete_space_falls_back_to_random() -> None:
    space = SearchSpace((Param("A", "int", 1, low=1, high=3), Param("B", "categorical", "x", choices=("x", "y"))))
    study = optuna.create_study(sampler=_sampler(space, n_init=2))
    seen = []
    for _ in range(7):
        trial = study.ask()
        config = space.suggest(trial)
        seen.append((config["A"], config["B"]))
        study.tell(trial, config["A"] + (config["B"] == "y"))
    assert len(set(seen[:6])) == 6  # SMAC covered all six configurations once
    assert seen[6] in seen[:6] and ORIGIN_ATTR not in study.trials[6].system_attrs  # then random, no error


def test_bad_options_are_clear() -> None:
    space = _small_space()
    for opts, message in (({"n_init": -1}, "n_init"), ({"random_ratio": 2}, "random_ratio"), ({"x": 1}, "unknown")):
        with pytest.raises(MethodError, match=message):
            _sampler(space, **opts)
    with pytest.raises(MethodError, match="n_init"):
        _sampler(space, n_init="many")


def test_initial_design_is_at_most_a_quarter_of_a_known_trial_budget() -> None:
    space = reference_space()
    assert _sampler(space).n_init == 25  # a compute budget: no trial count, the reference's 25 Sobol points
    assert _sampler(space, n_trials=30).n_init == 7  # Optuna or Ray Tune with 30 samples, as SMAC's facades cap it
    assert _sampler(space, n_trials=30, n_init=12).n_init == 12  # an explicit n_init wins
    with pytest.raises(MethodError, match="n_trials must be >= 1"):
        _sampler(space, n_trials=0)
