"""The peer methods (tpe-optuna, hebo, ngopt) and the failure forms: each runs on a small space with a
power of two, a log float and a categorical, stays inside it, repeats itself with a seed, and is told
failures in the form its method declares (gp a constraint violation, not the penalty; hebo and ngopt the
worst success; tpe, the reference protocol, the penalty), while the study still records and counts
every failure as one."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from method_packages import skip_without_package
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import centaur
from centaur.methods.base import MethodContext, MethodError, create_sampler, method_info
from centaur.methods.failures import FailureView, is_failure
from centaur.samplers import create
from centaur.space import Param, SearchSpace
from centaur.study import optuna_private as op
from centaur.study.records import summarize
from centaur.tasks.base import TrialResult, TrialStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)

PENALTY = 100.0
SPACE = SearchSpace((
    Param("BATCH", "pow2", 64, low=16, high=1024),
    Param("LR", "float", 1e-3, low=1e-5, high=1e-1, log=True),
    Param("DEPTH", "int", 4, low=1, high=12),
    Param("ACT", "categorical", "relu", choices=("relu", "gelu", "tanh")),
))  # fmt: skip


@dataclass
class Toy:
    """In-process task: BATCH x DEPTH above 1024 runs out of memory; the best is LR 1e-3, gelu, batch 64."""

    name: str = "toy"
    metric: str = "loss"
    space: SearchSpace = field(default_factory=lambda: SPACE)
    configs: list[dict[str, Any]] = field(default_factory=list)

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        self.configs.append(dict(config))
        if oom(config["BATCH"], config["DEPTH"]):
            return TrialResult(TrialStatus.OOM, cost_s=1.0, wall_s=1.0, error="CUDA out of memory")
        loss = (math.log10(config["LR"]) + 3) ** 2 + 0.1 * abs(math.log2(config["BATCH"]) - 6)
        loss += 0.05 * abs(config["DEPTH"] - 6) + (config["ACT"] != "gelu")
        return TrialResult(TrialStatus.OK, value=1.0 + loss, cost_s=1.0, wall_s=1.0)

    def describe(self) -> str:
        return "a toy task"


def oom(batch: int, depth: int) -> bool:
    return batch * depth > 1024


def _n_oom(task: Toy) -> int:
    return sum(oom(c["BATCH"], c["DEPTH"]) for c in task.configs)


def _tune(tmp_path: Path, method: str, n: int, seed: int = 0, **options: Any) -> tuple[optuna.Study, Toy]:
    task = Toy()
    r = centaur.tune(task, method=method, n_trials=n, seed=seed, run_dir=tmp_path / f"{method}-{seed}-{len(options)}",
                     method_options=options, keep_going=True)  # fmt: skip
    return r.study, task


def _assert_in_space(study: optuna.Study, task: Toy) -> None:
    for t, config in zip(sorted(study.get_trials(), key=lambda t: t.number), task.configs, strict=True):
        assert SPACE.violations(config) == [], config
        assert config["BATCH"] == 2 ** t.params["log2(BATCH)"]  # what the sampler proposed is what ran
        assert isinstance(config["DEPTH"], int) and config["ACT"] in ("relu", "gelu", "tanh")


# -- each new method: inside the space, reproducible, failures recorded --------------------------------
# NGOpt's default (ordered powers of two) steps to neighbouring powers and stays clear of this toy's OOM
# region for dozens of trials; its unordered form jumps into it within a dozen.
FAST = [("tpe-optuna", {"n_startup_trials": 3}, 10), ("ngopt", {"pow2": "choice"}, 12), ("ngopt", {}, 12)]


FAST_IDS = [f"{m}-{'-'.join(map(str, o.values())) or 'default'}" for m, o, _ in FAST]


@pytest.mark.parametrize(("method", "options", "n"), FAST, ids=FAST_IDS)
def test_fast_peers_stay_in_the_space_and_repeat_with_a_seed(tmp_path: Path, method: str, options: dict, n: int
                                                             ) -> None:  # fmt: skip
    study, task = _tune(tmp_path / "a", method, n, **options)
    _assert_in_space(study, task)
    again, task_again = _tune(tmp_path / "b", method, n, **options)
    assert task_again.configs == task.configs
    other, task_other = _tune(tmp_path / "c", method, n, seed=1, **options)
    assert task_other.configs != task.configs
    s = summarize(study)
    assert s.n_finished == n and s.failures["oom"] == _n_oom(task)
    assert _n_oom(task) > 0 or options == {} and method == "ngopt"


@pytest.mark.slow  # HEBO's acquisition search takes seconds per proposal on two cores
def test_hebo_stays_in_the_space_repeats_with_a_seed_and_uses_its_model(tmp_path: Path) -> None:
    pytest.importorskip("hebo")  # HEBO pins numpy<1.25, so it is installed without its deps (docs/samplers.md)
    n = 7  # 1 + 4 parameters from HEBO's Sobol design (the baseline counts), then its model
    study, task = _tune(tmp_path / "a", "hebo", n)
    _assert_in_space(study, task)
    origins = [t.system_attrs.get("hebo:origin") for t in sorted(study.get_trials(), key=lambda t: t.number)]
    assert origins == [None] + ["hebo:sobol"] * 4 + ["hebo:model"] * 2
    again, task_again = _tune(tmp_path / "b", "hebo", n)
    assert task_again.configs == task.configs
    assert summarize(study).failures["oom"] == _n_oom(task)


def test_hebo_design_continues_its_sobol_stream_after_a_resume(tmp_path: Path) -> None:
    pytest.importorskip("hebo")
    first = centaur.tune(Toy(), method="hebo", n_trials=3, run_dir=tmp_path)
    resumed = centaur.tune(Toy(), method="hebo", n_trials=2, run_dir=tmp_path)  # a new sampler, same study
    configs = [t.user_attrs["config"] for t in resumed.study.get_trials()]
    assert len(configs) == 5 and len({tuple(sorted(c.items())) for c in configs}) == 5
    assert first.study.study_name == resumed.study.study_name


# -- the mapping onto each library ---------------------------------------------------------------------
def test_ngopt_parametrization_maps_each_kind() -> None:
    ng = pytest.importorskip("nevergrad")
    from centaur.methods.peers.ngopt import parametrization_of

    space = SearchSpace((*SPACE.params, Param("LOGINT", "int", 8, low=1, high=64, log=True),
                         Param("WD", "float", 0.1, low=0.0, high=0.5)))  # fmt: skip
    param = parametrization_of(space, seed=0)
    exponents = [4, 5, 6, 7, 8, 9, 10]
    assert isinstance(param["log2(BATCH)"], ng.p.TransitionChoice)  # ordered: mutations step to neighbours
    assert list(param["log2(BATCH)"].choices.value) == exponents
    unordered = parametrization_of(space, seed=0, pow2="choice")["log2(BATCH)"]
    assert isinstance(unordered, ng.p.Choice) and list(unordered.choices.value) == exponents
    assert isinstance(param["ACT"], ng.p.Choice)
    assert isinstance(param["LR"], ng.p.Log) and isinstance(param["LOGINT"], ng.p.Log)
    assert isinstance(param["WD"], ng.p.Scalar) and not isinstance(param["WD"], ng.p.Log)
    for _ in range(30):
        value = param.spawn_child()
        value.mutate()
        assert isinstance(value.value["DEPTH"], int) and isinstance(value.value["LOGINT"], int)


def test_hebo_design_maps_each_kind() -> None:
    from centaur.methods.peers.hebo import design_of, from_hebo, to_hebo

    space = SearchSpace((*SPACE.params, Param("LOGINT", "int", 8, low=1, high=64, log=True),
                         Param("FIXED", "float", 0.1, low=0.1, high=0.1)))  # fmt: skip
    kinds = {r["name"]: r["type"] for r in design_of(space)}
    assert kinds == {"log2(BATCH)": "int_exponent", "LR": "pow", "DEPTH": "int", "ACT": "cat", "LOGINT": "pow_int"}
    batch, act = space["BATCH"], space["ACT"]
    assert to_hebo(batch, 6) == 64 and from_hebo(batch, 64) == 6
    assert from_hebo(act, to_hebo(act, "tanh")) == "tanh"
    assert from_hebo(space["LR"], 0.1000000001) == 0.1  # back inside the range


# -- failures told in each method's form --------------------------------------------------------------
class Spy:
    """Records what an Optuna sampler reads of the study at each relative sampling."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sampler_cls: type) -> None:
        self.seen: list[list[tuple[float | None, dict[str, float], bool]]] = []
        original = sampler_cls.sample_relative

        def spy(sampler: Any, study: Any, trial: Any, search_space: Any) -> Any:
            trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            self.seen.append([(t.value, dict(t.constraints), is_failure(t)) for t in trials])
            return original(sampler, study, trial, search_space)

        monkeypatch.setattr(sampler_cls, "sample_relative", spy)

    def last(self) -> list[tuple[float | None, dict[str, float], bool]]:
        assert self.seen, "the sampler never sampled relative to the study"
        return self.seen[-1]


def _failed_and_ok(seen: list[tuple[float | None, dict[str, float], bool]]) -> tuple[list, list]:
    failed = [s for s in seen if s[2]]
    ok = [s for s in seen if not s[2]]
    assert failed and ok, "the toy study should have both failures and successes by now"
    return failed, ok


def test_gp_is_told_failures_as_constraint_violations_at_the_worst_success(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    spy = Spy(monkeypatch, optuna.samplers.GPSampler)
    study, task = _tune(tmp_path, "gp", 9, n_startup_trials=6)
    failed, ok = _failed_and_ok(spy.last())
    worst = max(v for v, _, _ in ok)
    assert all(v == worst and c == {"failed": 1.0} for v, c, _ in failed)  # never the penalty of 100
    assert all(c == {"failed": 0.0} for _, c, _ in ok)
    assert all(t.value is None and t.user_attrs["penalty"] == PENALTY for t in study.get_trials() if is_failure(t))
    assert summarize(study).failures["oom"] == _n_oom(task)


def test_gp_with_failures_penalty_gets_the_reference_protocol(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    spy = Spy(monkeypatch, optuna.samplers.GPSampler)
    _tune(tmp_path, "gp", 9, n_startup_trials=6, failures="penalty")
    failed, ok = _failed_and_ok(spy.last())
    assert all(v == PENALTY and c == {} for v, c, _ in failed)
    assert all(c == {} for _, c, _ in ok)  # no constraint at all: Optuna 4.8's samplers saw only the value


def test_tpe_keeps_the_reference_protocol(monkeypatch, tmp_path: Path) -> None:
    spy = Spy(monkeypatch, optuna.samplers.TPESampler)
    _tune(tmp_path, "tpe", 10, n_startup_trials=3, multivariate=True)
    failed, _ = _failed_and_ok(spy.last())
    assert all(v == PENALTY and c == {} for v, c, _ in failed)


def test_tpe_optuna_is_told_failures_in_its_declared_form(monkeypatch, tmp_path: Path) -> None:
    spy = Spy(monkeypatch, optuna.samplers.TPESampler)
    _tune(tmp_path, "tpe-optuna", 10, n_startup_trials=3)
    failed, ok = _failed_and_ok(spy.last())
    form = method_info("tpe-optuna").failures
    assert form in ("penalty", "constraint")
    if form == "constraint":
        assert all(v == max(w for w, _, _ in ok) and c == {"failed": 1.0} for v, c, _ in failed)
    else:
        assert all(v == PENALTY and c == {} for v, c, _ in failed)


def test_ngopt_is_told_failures_as_the_worst_success(monkeypatch, tmp_path: Path) -> None:
    ng = pytest.importorskip("nevergrad")
    told: list[tuple[bool, float]] = []
    original = ng.optimizers.base.Optimizer.tell

    def spy(self: Any, candidate: Any, loss: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, ng.optimizers.NGOpt):  # not again when NGOpt hands it to the algorithm it chose
            told.append((oom(2 ** candidate.value["log2(BATCH)"], candidate.value["DEPTH"]), float(loss)))
        return original(self, candidate, loss, *args, **kwargs)

    monkeypatch.setattr(ng.optimizers.base.Optimizer, "tell", spy)
    study, task = _tune(tmp_path, "ngopt", 14, pow2="choice")  # reaches the OOM region (see FAST)
    failed = [loss for f, loss in told if f]
    assert failed and PENALTY not in failed
    for i, (f, loss) in enumerate(told):  # each failure told as the worst success told before it
        if f and any(not g for g, _ in told[:i]):
            assert loss == max(v for g, v in told[:i] if not g)
    last = task.configs[-1]  # the last trial is never told
    assert summarize(study).failures["oom"] == len(failed) + oom(last["BATCH"], last["DEPTH"])


def test_hebo_observes_failures_as_the_worst_success(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("hebo")
    from hebo.optimizers.hebo import HEBO

    seen: list[tuple[list[bool], list[float]]] = []

    def spy(self: Any, X: Any, y: Any) -> None:
        seen.append(([oom(int(b), int(d)) for b, d in zip(X["log2(BATCH)"], X["DEPTH"], strict=True)],
                     [float(v) for v in y.reshape(-1)]))  # fmt: skip
        original(self, X, y)

    original = HEBO.observe
    monkeypatch.setattr(HEBO, "observe", spy)
    study, task = _tune(tmp_path, "hebo", 5)  # the Sobol design only: the told values are what matters here
    failed, losses = seen[-1]  # HEBO's batch column holds the powers of two themselves
    ok = [v for f, v in zip(failed, losses, strict=True) if not f]
    bad = [v for f, v in zip(failed, losses, strict=True) if f]
    assert ok and bad, f"the Sobol design should have hit an out-of-memory point: {failed}"
    assert all(v == max(ok) for v in bad) and PENALTY not in losses


def test_failure_view_leaves_a_study_without_failures_and_user_constraints_alone() -> None:
    study = optuna.create_study()
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_constraint("mine", 0.5)
    study.tell(trial, 0.3)
    for form in ("penalty", "constraint", "worst"):
        (t,) = FailureView(study, form, {}).get_trials(deepcopy=False)
        assert t.value == 0.3 and t.constraints == {"mine": 0.5}


# -- refusals and the public sampler API ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["ngopt", "hebo"])
def test_peers_refuse_a_multi_objective_study(method: str) -> None:
    skip_without_package(method)
    sampler = create(method, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    with pytest.raises(ValueError, match="single-objective"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=2)


@pytest.mark.parametrize(("method", "module", "extra"), [("ngopt", "nevergrad", "nevergrad"), ("hebo", "hebo", "hebo")])
def test_a_missing_library_names_the_extra(monkeypatch, method: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MethodError, match=rf"centaur-hpo\[{extra}\]"):
        create_sampler(method, MethodContext(space=SPACE))


@pytest.mark.parametrize("method", ["ngopt", "hebo", "gp", "tpe-optuna"])
def test_a_bad_failure_form_is_refused_by_name(method: str) -> None:
    skip_without_package(method)
    with pytest.raises(MethodError, match="failures"):
        create_sampler(method, MethodContext(space=SPACE, options={"failures": "ignore"}))


def test_ngopt_in_a_plain_optuna_program_respects_every_distribution() -> None:
    pytest.importorskip("nevergrad")
    dists = {"f_log": FloatDistribution(1e-4, 1.0, log=True), "i": IntDistribution(-2, 7),
             "i_log": IntDistribution(1, 64, log=True), "c": CategoricalDistribution(["a", "b", None])}  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        f_log = trial.suggest_float("f_log", 1e-4, 1.0, log=True)
        i, i_log = trial.suggest_int("i", -2, 7), trial.suggest_int("i_log", 1, 64, log=True)
        c = trial.suggest_categorical("c", ["a", "b", None])
        return abs(math.log10(f_log) + 2) + abs(i - 3) + abs(math.log2(i_log) - 3) + (c != "b")

    with create("ngopt", seed=3) as sampler:
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective, n_trials=15)
    for t in study.trials:
        for name, d in dists.items():
            assert op.distribution_contains(d, t.params[name]), (name, t.params[name])
    assert len({tuple(t.params.items()) for t in study.trials}) > 10


def test_ngopt_runs_a_continuous_study_that_builds_a_metamodel() -> None:
    """NGOpt on one float picks an optimizer with a metamodel step; on NumPy >= 2.4 Nevergrad 1.0.12 raised a
    TypeError there (centaur.methods.peers.nevergrad_compat). The study must finish, every trial inside."""
    pytest.importorskip("nevergrad")
    with create("ngopt", seed=0) as sampler:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=40)
    assert all(t.state == optuna.trial.TrialState.COMPLETE and -2 <= t.params["x"] <= 2 for t in study.trials)
    assert study.best_value < 0.05


def test_the_nevergrad_internals_we_patch_are_still_there() -> None:
    """Fails when Nevergrad moves what nevergrad_compat wraps: then drop or redo the patch."""
    pytest.importorskip("nevergrad")
    from nevergrad.optimization import metamodel, optimizerlib

    from centaur.methods.peers import nevergrad_compat

    assert callable(metamodel.learn_on_k_best) and issubclass(metamodel.MetaModelFailure, Exception)
    nevergrad_compat.patch()
    nevergrad_compat.patch()  # once only: not wrapped twice
    wrapped = optimizerlib.learn_on_k_best
    assert getattr(wrapped, "_centaur_numpy24", False) and wrapped.__wrapped__ is metamodel.learn_on_k_best
