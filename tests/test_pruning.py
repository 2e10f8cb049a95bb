"""Pruning: intermediate values read from the running script, Optuna's pruners, PRUNED trials in the
budget, on resume and in every method (issue #16)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import centaur
from centaur.api import resolve_task
from centaur.methods.cmaes.sampler import GEN_ATTR, CatCmaSampler
from centaur.methods.llm.common import outcome_text, read_history
from centaur.runner.process import run_script
from centaur.runner.progress import (
    LineSplitter,
    ProgressPattern,
    ProgressPatternError,
    ProgressReader,
    StopRequest,
)
from centaur.space import SearchSpace
from centaur.space.params import Param
from centaur.study.durable import PendingResult, ResultJournal, write_result
from centaur.study.loop import StudyMismatch
from centaur.study.pruning import PrunerError, PrunerSettings

PROGRESS = r"^progress t=(?P<seconds>[0-9.]+)s loss=(?P<value>[-0-9.eE+]+)"

# A "training run" that prints its loss at fixed elapsed seconds: CURVE falling or flat, or, with a
# float SLOWNESS, a loss that falls the slower the larger it is (so the larger, the likelier it is pruned).
CURVES = '''
import time

CURVE = "falling"
SLOWNESS = 0.0
OTHER = 0.5  # unused: CMA-ES needs two dimensions
STEPS = 10
DELAY = 0.12

for t in range(1, STEPS + 1):
    time.sleep(DELAY)
    if CURVE == "flat":
        v = 9.0
    else:
        v = 10.0 - t * (1.0 - SLOWNESS)
    print(f"progress t={t}s loss={v}", flush=True)
print("val_bpb:", v)
print("training_seconds: 2.0")
'''


def _task_dir(tmp_path: Path, params: str) -> Path:
    d = tmp_path / "task"
    d.mkdir()
    (d / "train.py").write_text(CURVES)
    (d / "centaur.toml").write_text(
        f'[task]\nmetric = "val_bpb"\nprogress = "{PROGRESS.replace(chr(92), chr(92) * 2)}"\n\n'
        '[space]\nexclude = ["STEPS", "DELAY"]\n\n' + textwrap.dedent(params)
    )
    return d / "train.py"


CURVE_ONLY = """\
    [space.params.CURVE]
    type = "categorical"
    choices = ["falling", "flat"]

    [space.params.SLOWNESS]
    fixed = 0.0

    [space.params.OTHER]
    fixed = 0.5
"""
X_ONLY = """\
    [space.params.CURVE]
    fixed = "falling"

    [space.params.SLOWNESS]
    type = "float"
    low = 0.0
    high = 1.0

    [space.params.OTHER]
    type = "float"
    low = 0.0
    high = 1.0
"""


# -- the progress parser -------------------------------------------------------------------------
def test_progress_pattern_groups_and_errors() -> None:
    p = ProgressPattern.compile(PROGRESS)
    assert p.position == "seconds" and p.unit == "s"
    assert p.match("progress t=12.5s loss=1.25") == (12.5, 1.25)
    assert p.match("step 00012 | loss 1.2") is None
    assert ProgressPattern.compile(r"it (?P<step>\d+) loss (?P<value>\S+)").unit == "step"
    assert ProgressPattern.compile(r"loss (?P<value>\S+)").position is None  # wall seconds
    assert ProgressPattern.compile(r"t=(?P<elapsed>\S+) v=(?P<value>\S+)").match("t=3 v=2") == (3.0, 2.0)
    for bad, why in ((r"loss (\S+)", "(?P<value>"), (r"(?P<value>\d+) (?P<step>\d) (?P<seconds>\d)", "one of"),
                     (r"(?P<value>[", "not a valid regex"), ("", "regex string")):
        with pytest.raises(ProgressPatternError, match=re_escape(why)):
            ProgressPattern.compile(bad)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_seconds_are_filled_so_trials_share_steps() -> None:
    reports: list[tuple[list[int], float]] = []
    reader = ProgressReader(ProgressPattern.compile(PROGRESS), lambda steps, v: reports.append((steps, v)))
    for line in ("progress t=5.0s loss=3", "progress t=5.7s loss=2.9", "progress t=10.4s loss=2.5", "noise",
                 "progress t=12s loss=nan", "progress t=13s loss=2.2"):
        reader.feed_line(line)
    assert reports == [([5], 3.0), ([6, 7, 8, 9, 10], 2.5), ([11, 12, 13], 2.2)]
    steps: list[tuple[list[int], float]] = []
    by_step = ProgressReader(ProgressPattern.compile(r"it (?P<step>\d+) (?P<value>\S+)"),
                             lambda s, v: steps.append((s, v)))
    for line in ("it 100 2.0", "it 100 1.0", "it 50 1.0", "it 200 1.5"):
        by_step.feed_line(line)
    assert steps == [([100], 2.0), ([200], 1.5)]  # a step is reported once, in order
    clock = iter([0.0, 2.6, 7.1])
    wall: list[tuple[list[int], float]] = []
    by_wall = ProgressReader(ProgressPattern.compile(r"loss (?P<value>\S+)"), lambda s, v: wall.append((s, v)),
                             clock=lambda: next(clock))
    by_wall.feed_line("loss 3")
    by_wall.feed_line("loss 2")
    assert wall == [([2], 3.0), ([3, 4, 5, 6, 7], 2.0)]


def test_line_splitter_takes_carriage_returns_and_split_chunks() -> None:
    lines: list[str] = []
    split = LineSplitter(lines.append)
    for chunk in (b"step 1\rstep", b" 2\rprogress t=1s lo", b"ss=2\n\nlast"):
        split.feed(chunk)
    split.close()
    assert lines == ["step 1", "step 2", "progress t=1s loss=2", "last"]


def test_stop_request_kills_the_running_script_and_says_so(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time\nfor i in range(100):\n    print(f'progress t={i}s loss=1', flush=True)\n"
                      "    time.sleep(0.1)\n")
    stop = StopRequest()
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if len(seen) == 3:
            stop.request("enough")

    t0 = time.monotonic()
    r = run_script(script, cwd=tmp_path, log_path=tmp_path / "log", timeout_s=60, on_line=on_line, stop=stop)
    assert r.stopped and not r.timed_out and time.monotonic() - t0 < 5
    assert seen[:3] == ["progress t=0s loss=1", "progress t=1s loss=1", "progress t=2s loss=1"]
    done = StopRequest()
    quick = tmp_path / "quick.py"
    quick.write_text("print('done')\n")
    r = run_script(quick, cwd=tmp_path, log_path=tmp_path / "log2", timeout_s=60, stop=done)
    done.request("too late")  # after the end: it was not stopped for it
    assert r.returncode == 0 and not r.stopped and not done.stopped


# -- settings -------------------------------------------------------------------------------------
def test_pruner_settings_parse_and_refuse_by_name() -> None:
    s = PrunerSettings.parse("median", warmup="1m", startup_trials=3)
    assert (s.warmup, s.startup_trials) == (60, 3)
    assert isinstance(s.build(), optuna.pruners.MedianPruner)
    assert PrunerSettings.from_dict(s.as_dict()) == s
    assert PrunerSettings.from_dict(None) == PrunerSettings() and not PrunerSettings().active
    assert isinstance(PrunerSettings.parse("hyperband", min_resource="5s").build(), optuna.pruners.HyperbandPruner)
    assert isinstance(PrunerSettings.parse("successive-halving").build(), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(PrunerSettings.parse("wilcoxon", p_threshold=0.05).build(), optuna.pruners.WilcoxonPruner)
    assert isinstance(PrunerSettings.parse("percentile", percentile=10).build(), optuna.pruners.PercentilePruner)
    with pytest.raises(PrunerError, match="--pruner must be one of"):
        PrunerSettings.parse("asha")
    with pytest.raises(PrunerError, match="--pruner-percentile: not a setting of --pruner median"):
        PrunerSettings.parse("median", percentile=10)
    with pytest.raises(PrunerError, match="--pruner-warmup"):
        PrunerSettings.parse("median", warmup="soon")
    with pytest.raises(PrunerError, match="--pruner-reduction-factor"):
        PrunerSettings.parse("hyperband", reduction_factor=1)


def test_pruner_needs_progress_and_hyperband_is_refused_for_cmaes(tmp_path: Path) -> None:
    script = _task_dir(tmp_path, CURVE_ONLY)
    with pytest.raises(PrunerError, match="hyperband cannot be used with --method cmaes"):
        centaur.tune(script, method="cmaes", n_trials=1, run_dir=tmp_path / "r", pruner="hyperband")
    with pytest.raises(PrunerError, match="hyperband cannot be used with --method centaur"):
        centaur.tune(script, method="centaur", n_trials=1, run_dir=tmp_path / "r", pruner="hyperband")
    quad = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"
    with pytest.raises(PrunerError, match=r"\[task\] progress"):
        centaur.tune(quad, method="tpe", n_trials=1, run_dir=tmp_path / "q", pruner="median")


# -- end to end, real subprocesses ---------------------------------------------------------------
def _enqueue(study: optuna.Study, script: Path, curves: list[str]) -> None:
    space = resolve_task(script).space
    for c in curves:
        study.enqueue_trial(space.encode({**space.defaults(), "CURVE": c}))


def test_median_prunes_the_flat_curve_counts_its_cost_and_resume_keeps_it(tmp_path: Path) -> None:
    script = _task_dir(tmp_path, CURVE_ONLY)
    median = {"kind": "median", "startup_trials": 2}
    first = centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", pruner=median)
    _enqueue(first.study, script, ["falling", "falling", "flat", "falling", "flat"])
    r = centaur.tune(script, method="random", n_trials=5, run_dir=tmp_path / "runs", pruner=median)
    trials = r.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.COMPLETE,
                                                                      TrialState.PRUNED]
    for t in trials:
        assert len(t.intermediate_values) >= 1  # reported while it ran
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["status"] == "pruned" and t.user_attrs["config"]["CURVE"] == "flat"
            assert t.value == 9.0 and t.user_attrs["pruned_value"] == 9.0 and t.user_attrs["progress_unit"] == "s"
            assert t.user_attrs["pruned_step"] < 10 and t.last_step == t.user_attrs["pruned_step"]
            assert t.user_attrs["cost_s"] == pytest.approx(t.user_attrs["wall_s"])  # what it really ran
            assert t.constraints == {"failed": 0.0, "0": 0.0}  # it ran: not infeasible (named, and as a list)
            assert "error" not in t.user_attrs
        else:
            assert t.user_attrs["status"] == "ok" and t.user_attrs["cost_s"] == 2.0
            assert sorted(t.intermediate_values) == list(range(1, 11))
    s = r.summary
    assert s.failures == {"pruned": 2} and s.n_ok == 4 and s.best_value == 0.0
    assert s.used_s == pytest.approx(sum(t.user_attrs["cost_s"] for t in trials))  # the budget counts what ran
    # Resume: PRUNED trials stay PRUNED and count; the study goes on with the same pruner.
    again = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs", pruner=median)
    old = {t.number: t for t in again.study.get_trials() if t.number <= 5}
    assert all(old[n].state == trials[n].state and old[n].value == trials[n].value for n in old)
    assert again.summary.n_finished == 8 and again.summary.failures["pruned"] >= 2
    # The pruner is part of what defines the study.
    with pytest.raises(
        StudyMismatch, match=r"the pruner is none, the study's is median \(warmup=0, startup_trials=2"
    ):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs")
    with pytest.raises(StudyMismatch, match=r"the pruner is median \(warmup=0, startup_trials=5, interval=1\), the"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", pruner="median")


def test_a_study_without_a_pruner_resumes_and_refuses_one(tmp_path: Path) -> None:
    script = _task_dir(tmp_path, CURVE_ONLY)
    r = centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs")
    assert "pruner" not in r.study.user_attrs["identity"]  # identities of unpruned studies are unchanged
    assert all(t.state == TrialState.COMPLETE for t in r.study.get_trials())
    centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", pruner="none")
    with pytest.raises(StudyMismatch, match="the pruner is median.*the study's is none"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", pruner="median")


@pytest.mark.slow
def test_cmaes_completes_generations_with_pruned_members(tmp_path: Path) -> None:
    script = _task_dir(tmp_path, X_ONLY)
    r = centaur.tune(script, method="cmaes", n_trials=10, run_dir=tmp_path / "runs", seed=1,
                     method_options={"popsize": 4}, pruner={"kind": "median", "startup_trials": 1})
    trials = r.study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.params, t.state) for t in trials]
    sampler = CatCmaSampler(resolve_task(script).space, 1, popsize=3)
    opt = sampler._load(r.study)
    from centaur.methods.cmaes import library

    told = library.told(opt)
    assert opt.generation >= 2
    assert {t.number for t in pruned} & told  # pruned members were told to CMA-ES
    assert all(GEN_ATTR in t.system_attrs for t in trials)


# -- each method with pruned trials (no subprocess) -----------------------------------------------
def _space() -> SearchSpace:
    return SearchSpace((Param("A", "float", 0.5, 0.0, 1.0), Param("B", "float", 0.5, 0.0, 1.0)))


def _add(study: optuna.Study, space: SearchSpace, a: float, state: TrialState, value: float | None,
         status: str, gen: int = 0, steps: dict[int, float] | None = None) -> None:
    config = {"A": a, "B": 0.5}
    attrs = {"status": status, "config": config, "cost_s": 1.0}
    if state == TrialState.PRUNED:
        last = max(steps or {0: value})
        attrs.update(pruned_step=last, pruned_value=(steps or {0: value})[last], progress_unit="s")
    study.add_trial(create_trial(
        params=space.encode(config), distributions=space.distributions(), state=state,
        value=value if state == TrialState.COMPLETE else None, intermediate_values=steps or {},
        user_attrs=attrs, system_attrs={GEN_ATTR: gen},
    ))  # fmt: skip


def test_cmaes_ranks_pruned_behind_successes_and_ahead_of_failures() -> None:
    space = _space()
    study = optuna.create_study()
    _add(study, space, 0.1, TrialState.COMPLETE, 1.0, "ok")
    _add(study, space, 0.2, TrialState.COMPLETE, 2.0, "ok")
    _add(study, space, 0.3, TrialState.PRUNED, None, "pruned", steps={5: 3.0})
    _add(study, space, 0.4, TrialState.PRUNED, None, "pruned", steps={5: 2.5, 9: 2.8})
    _add(study, space, 0.9, TrialState.COMPLETE, 100.0, "oom")
    sampler = CatCmaSampler(space, 0, popsize=5)
    members = sampler._members(study, sampler.new_optimizer())
    assert len(members) == 5  # the pruned ones are members of their generation
    values = dict(zip([t.number for t in members], sampler._values(members, sampler._feasible(members)), strict=True))
    order = sorted(values, key=values.get)
    assert order == [0, 1, 3, 2, 4]  # successes, the later-pruned, the earlier-pruned, the failure
    assert max(values.values()) < 2.1  # no penalty in the ranked values
    opt = sampler.state(study)
    assert opt.generation == 1


def test_llm_tables_show_pruned_trials() -> None:
    space = _space()
    study = optuna.create_study()
    _add(study, space, 0.1, TrialState.COMPLETE, 1.0, "ok")
    _add(study, space, 0.3, TrialState.PRUNED, None, "pruned", steps={30: 1.3, 60: 1.12})
    history = read_history(study, space)
    obs = history.finished[1]
    assert obs.status == "pruned" and not obs.ok and obs in history.failures
    assert outcome_text(obs, "val_bpb") == "pruned at 60 s, val 1.12"


def test_smac_is_told_pruned_trials_at_their_last_value() -> None:
    pytest.importorskip("smac")
    from smac.runhistory import StatusType

    from centaur.methods.smac_sampler import SmacSampler

    space = _space()
    study = optuna.create_study()
    _add(study, space, 0.1, TrialState.COMPLETE, 1.0, "ok")
    _add(study, space, 0.3, TrialState.PRUNED, None, "pruned", steps={5: 3.5})
    sampler = SmacSampler(space, 0, penalty=100.0, n_init=1)
    try:
        smac = sampler._facade(study)
        sampler._sync(study, current=-1)
        told = {k.config_id: v for k, v in smac.runhistory.items()}
        assert sorted((v.cost, v.status) for v in told.values()) == [(1.0, StatusType.SUCCESS),
                                                                     (3.5, StatusType.CRASHED)]
    finally:
        sampler.close()


def test_tpe_and_gp_sample_with_pruned_trials_as_optuna_does() -> None:
    from centaur.methods.base import MethodContext, create_sampler

    space = _space()
    for method in ("tpe", "gp"):
        study = optuna.create_study(sampler=create_sampler(method, MethodContext(space=space, seed=0,
                                                                                  options={"n_startup_trials": 2})))
        for i in range(4):
            _add(study, space, 0.1 * (i + 1), TrialState.COMPLETE, float(i), "ok")
            _add(study, space, 0.9 - 0.1 * i, TrialState.PRUNED, None, "pruned", steps={5: 9.0})
        trial = study.ask({p.key: FloatDistribution(0.0, 1.0) for p in space})
        assert all(0.0 <= v <= 1.0 for v in trial.params.values())


def test_a_pruned_result_kept_locally_is_replayed_as_pruned(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.report(2.5, 7)
    pending = PendingResult(study_name="s", trial_id=trial._trial_id, number=trial.number, state="PRUNED",
                            value=None, constraint=0.0, user_attrs={"status": "pruned", "cost_s": 3.0})
    journal = ResultJournal(tmp_path)
    journal.save(pending)
    assert journal.replay(study, write_result) == [trial.number]
    write_result(study, pending)  # again: idempotent
    t = study.get_trials()[0]
    assert t.state == TrialState.PRUNED and t.value == 2.5 and t.user_attrs["cost_s"] == 3.0


def test_cli_pruner_options_are_checked_by_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from centaur.cli import app

    script = _task_dir(tmp_path, CURVE_ONLY)
    runner = CliRunner()
    r = runner.invoke(app, ["tune", str(script), "-m", "cmaes", "--pruner", "hyperband", "--n-trials", "1",
                            "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "hyperband cannot be used with --method cmaes" in r.output
    r = runner.invoke(app, ["tune", str(script), "--pruner", "median", "--pruner-min-resource", "5s",
                            "--n-trials", "1", "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--pruner-min-resource: not a setting of --pruner median" in r.output


def test_reports_count_pruned_trials_apart_from_failures() -> None:
    from centaur.report.collect import Run, TrialRecord

    run = Run("s", "tpe", 0, "t", None, [
        TrialRecord(0, "ok", 1.0, 10.0), TrialRecord(1, "pruned", None, 3.0), TrialRecord(2, "oom", None, 1.0),
    ])
    assert run.failure_share == pytest.approx(1 / 3)  # the pruner's stops are not failures
    assert run.failures == {"pruned": 1, "oom": 1} and run.used_s == 14.0  # but they are listed and they cost
