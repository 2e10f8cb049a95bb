"""Time-budget fidelity (issue #16, item 5): a trial runs complete short schedules of the script's
TIME_BUDGET-like parameter first, the pruner decides between them, and the budget counts every run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import centaur
from centaur.api import resolve_task
from centaur.config import ConfigError
from centaur.study.loop import HopelessStudy, StudyMismatch
from centaur.study.pruning import PrunerError, PrunerSettings

# A "training run" whose result depends on its schedule length: good configurations (small SHIFT) are
# good at every length, as a short schedule ranks them on the real task. Cost: 0.1 s per unit of budget.
SCRIPT = """
SHIFT = 0.5
SCALE = 0.5
TIME_BUDGET = 27

print(f"ran with TIME_BUDGET={TIME_BUDGET}")
print("val_loss:", (SHIFT - 0.1) ** 2 + SCALE * 0.01 + 1.0 / TIME_BUDGET)
print("training_seconds:", 0.1 * TIME_BUDGET)
"""


def _task(tmp_path: Path, task_extra: str = "") -> Path:
    d = tmp_path / "task"
    d.mkdir(exist_ok=True)
    (d / "train.py").write_text(SCRIPT)
    (d / "centaur.toml").write_text(
        '[task]\nmetric = "val_loss"\n' + task_extra + '\n[space]\nexclude = ["TIME_BUDGET"]\n\n'
        + textwrap.dedent("""\
        [space.params.SHIFT]
        type = "float"
        low = 0.0
        high = 1.0

        [space.params.SCALE]
        type = "float"
        low = 0.0
        high = 1.0
        """)
    )
    return d / "train.py"


def test_rungs_grow_by_the_reduction_factor_and_end_at_the_full_schedule() -> None:
    sha = PrunerSettings.parse("successive-halving", min_resource=3, reduction_factor=3, fidelity="TIME_BUDGET")
    assert sha.rungs(27) == [3, 9, 27]
    assert sha.rungs(40) == [3, 9, 40]  # 27 would cost most of a full run
    assert PrunerSettings.parse("successive-halving", fidelity="TIME_BUDGET").rungs(40) == [2, 8, 40]  # 40/4**2
    assert PrunerSettings.parse("median", fidelity="TIME_BUDGET").rungs(300) == [33, 99, 300]  # factor 3
    assert PrunerSettings.parse("median", fidelity="TIME_BUDGET").rungs(2) == [2]  # too short to split
    assert "fidelity=TIME_BUDGET" in sha.describe()
    with pytest.raises(PrunerError, match="--pruner-fidelity must name"):
        PrunerSettings.parse("median", fidelity="TIME BUDGET")
    with pytest.raises(PrunerError, match="--pruner-fidelity: not a setting of --pruner wilcoxon"):
        PrunerSettings.parse("wilcoxon", fidelity="TIME_BUDGET")


def test_successive_halving_on_short_schedules_prunes_bad_configurations(tmp_path: Path) -> None:
    script = _task(tmp_path)
    sha = {"kind": "successive-halving", "min_resource": 3, "reduction_factor": 3, "fidelity": "TIME_BUDGET"}
    first = centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", pruner=sha)
    space = resolve_task(script).space
    for x in (0.1, 0.15, 0.9, 0.12, 0.95, 0.85, 0.11, 0.9):
        first.study.enqueue_trial(space.encode({"SHIFT": x, "SCALE": 0.5}))
    r = centaur.tune(script, method="random", n_trials=8, run_dir=tmp_path / "runs", pruner=sha)
    trials = r.study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    shift = {t.number: t.user_attrs["config"]["SHIFT"] for t in trials}
    assert all(trials[n].state == TrialState.PRUNED for n in shift if n > 0 and shift[n] >= 0.85)  # at a short run
    assert trials[1].state == TrialState.COMPLETE  # the best configuration runs its full schedule
    for t in pruned:
        step = t.user_attrs["pruned_step"]
        assert step in (3, 9) and t.user_attrs["progress_unit"] == "TIME_BUDGET"
        rungs = [3, 9][: [3, 9].index(step) + 1]
        assert t.user_attrs["cost_s"] == pytest.approx(0.1 * sum(rungs))  # what its short runs cost
    for t in complete:
        assert sorted(t.intermediate_values) == [3, 9, 27]  # every rung, the full one last
        assert t.user_attrs["cost_s"] == pytest.approx(0.1 * (3 + 9 + 27))
        assert t.value == pytest.approx(t.intermediate_values[27])  # the result is the full schedule's
    trial_dir = tmp_path / "runs" / r.study.study_name / "trials" / f"{complete[0].number:05d}"
    assert (trial_dir / "TIME_BUDGET-3" / "train.py").read_text().count("TIME_BUDGET = 3\n") == 1
    assert "TIME_BUDGET = 27" in (trial_dir / "train.py").read_text()  # the full run has the script's own
    assert r.summary.used_s == pytest.approx(sum(t.user_attrs["cost_s"] for t in trials))
    # The fidelity is part of the study's pruner: a resume must match it.
    with pytest.raises(StudyMismatch, match=r"the study's is successive-halving \(.*fidelity=TIME_BUDGET\)"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs")


def test_task_fidelity_is_the_default_and_is_checked(tmp_path: Path) -> None:
    script = _task(tmp_path, 'fidelity = "TIME_BUDGET"\n')
    r = centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs",
                     pruner={"kind": "median", "startup_trials": 1})
    assert r.study.user_attrs["identity"]["pruner"]["fidelity"] == "TIME_BUDGET"
    t = r.study.get_trials()[0]
    assert sorted(t.intermediate_values) == [3, 9, 27]  # median's ladder: 27 / 3**2, times 3
    # Without a pruner the task's fidelity changes nothing: one full run.
    plain = centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "plain")
    assert plain.study.get_trials()[0].intermediate_values == {}

    with pytest.raises(PrunerError, match="SHIFT is tuned"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "x",
                     pruner={"kind": "median", "fidelity": "SHIFT"})
    with pytest.raises(PrunerError, match="no untuned numeric parameter EPOCHS.*TIME_BUDGET"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "e",
                     pruner={"kind": "median", "fidelity": "EPOCHS"})
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("trials"))
    (script.parent / "centaur.toml").write_text((script.parent / "centaur.toml").read_text().replace(
        'fidelity = "TIME_BUDGET"', "fidelity = 3"))
    with pytest.raises(ConfigError, match=r"\[task\] fidelity must name"):
        resolve_task(script)


def test_a_failing_short_run_is_the_trial_result(tmp_path: Path) -> None:
    script = _task(tmp_path)
    script.write_text(SCRIPT + "\nif TIME_BUDGET < 5:\n    raise SystemExit('too short to start')\n")
    sha = {"kind": "successive-halving", "min_resource": 3, "reduction_factor": 3, "fidelity": "TIME_BUDGET"}
    # The baseline fails at its first rung: the study stops, and the message points at that run's log.
    with pytest.raises(HopelessStudy, match=r"too short to start(.|\n)*TIME_BUDGET-3/trial.log"):
        centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", pruner=sha)
    study = optuna.load_study(study_name="task-random-seed0", storage=f"sqlite:///{tmp_path / 'runs' / 'study.db'}")
    t = study.get_trials()[0]
    assert t.state == TrialState.FAIL and t.user_attrs["status"] == "crash" and t.user_attrs["penalty"] == 100.0
    assert t.user_attrs["cost_s"] > 0 and 3 not in t.intermediate_values  # a failed run reports nothing
