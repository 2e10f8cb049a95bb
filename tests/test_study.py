"""End-to-end tuning through the library and the CLI, resume after SIGKILL, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

import centaur
from centaur.cli import app
from centaur.methods.failures import FailureView
from centaur.study.records import summarize
from centaur.study.storage import default_storage_url, open_storage

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"
CLASSICAL = ["random", "tpe", "cmaes", "cmaes-optuna", "gp"]


@pytest.mark.parametrize("method", CLASSICAL)
def test_tune_runs_each_classical_method(method: str, tmp_path: Path) -> None:
    result = centaur.tune(QUAD, method=method, budget="6s", run_dir=tmp_path)
    s = result.summary
    assert result.stop_reason == "budget spent"
    assert s.n_finished == 6 and s.used_s == pytest.approx(6.0)
    trials = result.study.get_trials()
    assert trials[0].user_attrs["proposal_source"] == "baseline"
    assert trials[0].user_attrs["config"] == {"LEARNING_RATE": 0.01, "WIDTH": 64, "LAYERS": 3}
    for t in trials:  # the value the optimizer saw is the value that ran
        assert t.user_attrs["config"]["WIDTH"] == 2 ** t.params["log2(WIDTH)"]
        assert Path(t.user_attrs["log"]).exists()


def test_same_seed_same_sequence_and_resume_continues(tmp_path: Path) -> None:
    a = centaur.tune(QUAD, method="random", budget="5s", run_dir=tmp_path / "a")
    b = centaur.tune(QUAD, method="random", budget="5s", run_dir=tmp_path / "b")
    configs = lambda r: [t.user_attrs["config"] for t in r.study.get_trials()]  # noqa: E731
    first = configs(a)
    assert first == configs(b)
    resumed = centaur.tune(QUAD, method="random", budget="8s", run_dir=tmp_path / "a")
    cs = configs(resumed)
    assert len(cs) == 8 and cs[:5] == first
    assert all(c not in cs[:5] for c in cs[5:])  # a resumed random search does not replay its sequence


def test_failures_are_failed_trials_told_with_the_penalty(tmp_path: Path) -> None:
    script = tmp_path / "s" / "train.py"
    script.parent.mkdir()
    script.write_text(
        "ALPHA = 0.5\nimport sys\nif ALPHA > 0.6:\n    raise MemoryError('boom')\n"
        "print('val_bpb:', ALPHA)\nprint('training_seconds: 1.0')\n"
    )
    (script.parent / "centaur.toml").write_text('[space.params.ALPHA]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n')
    r = centaur.tune(script, method="random", budget="1h", n_trials=12, penalty=50.0, run_dir=tmp_path / "runs")
    trials = r.study.get_trials()
    seen = {t.number: t for t in FailureView(r.study, "penalty", {}).get_trials()}  # what the method reads
    for t in trials:
        if t.user_attrs["config"]["ALPHA"] > 0.6:
            # recorded FAIL (no penalty among the values people plot), the penalty kept as what it is told
            assert t.state == TrialState.FAIL and t.value is None
            assert t.user_attrs["status"] == "oom" and t.user_attrs["penalty"] == 50.0
            assert seen[t.number].state == TrialState.COMPLETE and seen[t.number].value == 50.0
        else:
            assert t.user_attrs["status"] == "ok" and t.value == t.user_attrs["config"]["ALPHA"]
            assert seen[t.number].value == t.value
    assert r.summary.failures["oom"] >= 1
    assert r.best_value == min(t.value for t in trials if t.state == TrialState.COMPLETE)


def test_sigkill_mid_study_then_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "centaur.cli_main",
        "tune",
        str(QUAD),
        "--method",
        "cmaes-optuna",
        "--budget",
        "16s",
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "QUAD_SLEEP": "2.0"}
    log = open(tmp_path / "tune.log", "w")  # noqa: SIM115 - kept open for the subprocess
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    storage = default_storage_url(run_dir)
    deadline = time.time() + 120
    reached = False
    states: list = []
    while time.time() < deadline and not reached and proc.poll() is None:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="quadratic-cmaes-optuna-seed0", storage=open_storage(storage))
            states = [t.state for t in study.get_trials()]
        except Exception:
            continue
        reached = states.count(optuna.trial.TrialState.COMPLETE) >= 3 and states[-1] == optuna.trial.TrialState.RUNNING
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    output = (tmp_path / "tune.log").read_text()[-3000:]
    assert reached, f"never saw a running trial after 3 finished ones; states {states}; tune said:\n{output}"
    before = optuna.load_study(study_name="quadratic-cmaes-optuna-seed0", storage=storage).get_trials()
    done_before = {t.number: t.user_attrs["config"] for t in before if t.state.is_finished()}
    used_before = sum(t.user_attrs.get("cost_s", 0) for t in before if t.state.is_finished())
    r = centaur.tune(QUAD, method="cmaes-optuna", budget="16s", run_dir=run_dir)
    after = r.study.get_trials()
    for number, config in done_before.items():  # nothing finished is lost or changed
        assert after[number].user_attrs["config"] == config
    lost = [t for t in after if t.user_attrs.get("status") == "lost"]
    assert len(lost) == 1 and lost[0].state == optuna.trial.TrialState.FAIL
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in after)
    assert r.summary.used_s >= 16.0 and r.summary.used_s < 16.0 + 1.0 + 1.0
    assert r.summary.used_s > used_before
    # CMA-ES continued from its stored state: generations after the resume build on earlier ones.
    gens = [t.system_attrs.get("cma:generation") for t in after if "cma:generation" in t.system_attrs]
    assert max(gens) >= 1


def test_cli_tune_status_best(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["tune", str(QUAD), "-m", "tpe", "--budget", "4s", "--run-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["status", "--run-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "quadratic-tpe-seed0" in res.output
    out = tmp_path / "best.py"
    res = runner.invoke(
        app,
        [
            "best",
            "--study-name",
            "quadratic-tpe-seed0",
            "--run-dir",
            str(tmp_path),
            "--script",
            str(QUAD),
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "LEARNING_RATE = " in out.read_text()
    study = optuna.load_study(study_name="quadratic-tpe-seed0", storage=default_storage_url(tmp_path))
    assert summarize(study).n_finished == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["space", "/nonexistent/train.py"], "script not found"),
        (["tune", str(QUAD), "-m", "nope"], "unknown method"),
        (["tune", str(QUAD), "--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open storage"),
        (["status", "--run-dir", "/nonexistent-dir"], "no studies"),
    ],
)
def test_cli_errors_are_clear(args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    output = " ".join(res.output.split())  # rich wraps long messages
    assert message in output and "Traceback" not in output


def test_cli_errors_for_bad_scripts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("X = (\n")
    none = tmp_path / "none.py"
    none.write_text("print('hi')\n")
    (tmp_path / "toml").mkdir()
    script = tmp_path / "toml" / "train.py"
    script.write_text("LR = 0.1\n")
    (tmp_path / "toml" / "centaur.toml").write_text("[space\n")
    for path, message in ((bad, "syntax error"), (none, "no tunable"), (script, "not valid TOML")):
        res = CliRunner().invoke(app, ["space", str(path)])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


def test_proposal_source_written_by_a_sampler_is_kept(tmp_path: Path) -> None:
    r = centaur.tune(QUAD, method="tpe", budget="3s", run_dir=tmp_path)
    sources = [t.user_attrs["proposal_source"] for t in r.study.get_trials()]
    assert sources == ["baseline", "tpe", "tpe"]


def test_a_run_without_method_resumes_the_study_with_its_own_method(tmp_path):
    from centaur.api import DEFAULT_METHOD

    script = tmp_path / "task" / "train.py"
    script.parent.mkdir()
    script.write_text("LEARNING_RATE = 0.01\nprint(f'val_bpb: {1 + LEARNING_RATE}')\n")
    other = "random" if DEFAULT_METHOD != "random" else "tpe"
    first = centaur.tune(script, method=other, n_trials=1, run_dir=tmp_path / "runs")
    again = centaur.tune(script, n_trials=1, run_dir=tmp_path / "runs")  # no method: the study's own
    assert again.study.study_name == first.study.study_name == f"task-{other}-seed0"
    assert len(again.study.trials) == 2 and again.study.user_attrs["method"] == other
    fresh = centaur.tune(script, n_trials=1, seed=1, run_dir=tmp_path / "runs")  # no study of seed 1 yet
    assert fresh.study.user_attrs["method"] == DEFAULT_METHOD
