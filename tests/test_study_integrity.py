"""A new user's runs, as a real process from a real working directory: paths, study identity, stop rules,
input validation and what the terminal shows. Each test covers a defect a user met."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import centaur
from centaur.paths import absolute_storage_url, study_dirname
from centaur.study.loop import HopelessStudy, StudyMismatch
from centaur.study.records import summarize
from centaur.study.storage import default_storage_url, open_storage

QUAD = Path(__file__).parent / "fixtures" / "quadratic"
CLI = [sys.executable, "-m", "centaur.cli_main"]


def _project(root: Path, body: str | None = None, toml: str | None = None) -> Path:
    """A copy of the quadratic fixture in ROOT/proj (optionally with another script body or centaur.toml)."""
    proj = root / "proj"
    proj.mkdir(parents=True)
    (proj / "train.py").write_text(body if body is not None else (QUAD / "train.py").read_text())
    (proj / "centaur.toml").write_text(toml if toml is not None else (QUAD / "centaur.toml").read_text())
    return proj / "train.py"


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "80", **env},
    )  # fmt: skip


def _studies(run_dir: Path) -> list[optuna.Study]:
    storage = open_storage(default_storage_url(run_dir))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def _ok(study: optuna.Study) -> int:
    return summarize(study).n_ok


# -- paths -----------------------------------------------------------------------------------------------


def test_relative_script_in_a_subfolder_with_the_default_run_dir(tmp_path: Path) -> None:
    _project(tmp_path)
    out = _cli(["tune", "proj/train.py", "-m", "random", "--n-trials", "3"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    (study,) = _studies(tmp_path / "centaur-runs")  # the default run dir is in the caller's cwd
    assert _ok(study) == 3, [t.user_attrs.get("error") for t in study.trials]
    for t in study.trials:  # each trial ran its own work copy, under the run dir
        assert Path(t.user_attrs["log"]).is_relative_to(tmp_path / "centaur-runs")
    assert not (tmp_path / "proj" / "centaur-runs").exists()


def test_relative_run_dir_and_resume_from_another_cwd(tmp_path: Path) -> None:
    script = _project(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _cli(["tune", "../proj/train.py", "-m", "tpe", "--n-trials", "2", "--run-dir", "runs"], cwd=tmp_path / "a")
    assert first.returncode == 0, first.stderr + first.stdout
    again = _cli(["tune", str(script), "-m", "tpe", "--n-trials", "2", "--run-dir", "../a/runs"], cwd=tmp_path / "b")
    assert again.returncode == 0, again.stderr + again.stdout
    (study,) = _studies(tmp_path / "a" / "runs")
    assert len(study.trials) == 4 and _ok(study) == 4
    assert not (tmp_path / "b" / "runs").exists()


def test_a_stale_work_copy_at_the_script_relative_path_is_never_run(tmp_path: Path) -> None:
    """The old defect: the work copy was written relative to the cwd but run from the script's folder,
    so an older copy there ran and its result was stored against the new configuration."""
    _project(tmp_path)
    stale = tmp_path / "proj" / "centaur-runs" / "proj-random-seed0" / "trials" / "00001"
    stale.mkdir(parents=True)
    (stale / "train.py").write_text("print('val_bpb: 0.001')\nprint('training_seconds: 1.0')\n")
    out = _cli(["tune", "proj/train.py", "-m", "random", "--n-trials", "2"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    (study,) = _studies(tmp_path / "centaur-runs")
    assert all(t.value > 0.5 for t in study.trials)  # the quadratic's minimum is 1.0


def test_study_names_cannot_escape_the_run_dir(tmp_path: Path) -> None:
    script = _project(tmp_path)
    result = centaur.tune(script, method="random", n_trials=1, study_name="../../escape", run_dir=tmp_path / "runs")
    assert result.summary.n_ok == 1
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
    (trial_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert trial_dir.parent == tmp_path / "runs" and trial_dir.name.startswith("escape-")
    assert study_dirname("a/b") != study_dirname("a-b")


def test_relative_storage_urls_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_storage_url("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert absolute_storage_url("journal:logs/j.log") == f"journal:{tmp_path / 'logs' / 'j.log'}"
    assert absolute_storage_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert absolute_storage_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


# -- identity ----------------------------------------------------------------------------------------------


def test_resume_refuses_another_space_script_options_or_penalty(tmp_path: Path) -> None:
    script = _project(tmp_path)
    runs = tmp_path / "runs"
    centaur.tune(script, method="tpe", n_trials=1, run_dir=runs)
    toml = (script.parent / "centaur.toml").read_text()
    (script.parent / "centaur.toml").write_text(toml.replace("high = 8", "high = 9"))
    with pytest.raises(StudyMismatch, match="search space differs"):
        centaur.tune(script, method="tpe", n_trials=1, run_dir=runs)
    (script.parent / "centaur.toml").write_text(toml)
    script.write_text(script.read_text() + "\n# edited\n")
    with pytest.raises(StudyMismatch, match="script differs"):
        centaur.tune(script, method="tpe", n_trials=1, run_dir=runs)
    script.write_text(script.read_text().replace("\n# edited\n", ""))
    with pytest.raises(StudyMismatch, match="penalty"):
        centaur.tune(script, method="tpe", n_trials=1, run_dir=runs, penalty=5.0)
    with pytest.raises(StudyMismatch, match="option"):
        centaur.tune(script, method="tpe", n_trials=1, run_dir=runs, method_options={"n_startup_trials": 3})
    (study,) = _studies(runs)
    assert len(study.trials) == 1  # nothing of the refused runs reached the study
    centaur.tune(script, method="tpe", n_trials=1, run_dir=runs)  # as started: resumes
    assert len(_studies(runs)[0].trials) == 2


def test_a_worker_with_another_script_is_refused(tmp_path: Path) -> None:
    script = _project(tmp_path)
    other = tmp_path / "other" / "train.py"
    other.parent.mkdir()
    other.write_text(script.read_text().replace("LAYERS = 3", "LAYERS = 3\nDEPTH = 4"))
    shutil.copy(script.parent / "centaur.toml", other.parent / "centaur.toml")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    centaur.tune(script, method="random", n_trials=1, storage=url, study_name="s", run_dir=tmp_path / "runs")
    out = _cli(["worker", "--storage", url, "--study", "s", "--script", str(other), "--n-trials", "1", "--quiet"],
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "cannot join study 's'" in out.stderr, out.stderr
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1


def test_budget_is_kept_on_resume_extended_with_a_note_and_never_shrunk(tmp_path: Path) -> None:
    script = _project(tmp_path)
    runs = tmp_path / "runs"
    first = _cli(["tune", str(script), "-m", "random", "--budget", "2s", "--run-dir", str(runs)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (study,) = _studies(runs)
    assert study.user_attrs["budget_s"] == 2.0 and len(study.trials) == 2  # 1 s per trial
    kept = _cli(["tune", str(script), "-m", "random", "--run-dir", str(runs)], cwd=tmp_path)  # no --budget
    assert kept.returncode == 0 and "budget spent" in kept.stdout
    assert len(_studies(runs)[0].trials) == 2
    shrink = _cli(["tune", str(script), "-m", "random", "--budget", "1s", "--run-dir", str(runs)], cwd=tmp_path)
    assert shrink.returncode == 2 and "--budget" in shrink.stderr and "shrink" in shrink.stderr
    grow = _cli(["tune", str(script), "-m", "random", "--budget", "3s", "--run-dir", str(runs)], cwd=tmp_path)
    assert grow.returncode == 0 and "budget extended" in grow.stdout, grow.stdout
    (study,) = _studies(runs)
    assert study.user_attrs["budget_s"] == 3.0 and len(study.trials) == 3


def test_method_options_from_centaur_toml_apply_and_the_command_line_wins(tmp_path: Path) -> None:
    toml = (QUAD / "centaur.toml").read_text() + "\n[methods.cmaes]\npopsize = 6\nsigma0 = 0.2\n"
    script = _project(tmp_path, toml=toml)
    result = centaur.tune(script, method="cmaes", n_trials=1, run_dir=tmp_path / "runs", method_options={"sigma0": 0.3})
    assert result.study.user_attrs["identity"]["options"] == {"popsize": 6, "sigma0": 0.3}
    assert result.study.sampler.popsize == 6
    (script.parent / "centaur.toml").write_text(toml + "typo_option = 1\n")
    with pytest.raises(centaur.methods.base.MethodError, match="typo_option"):
        centaur.tune(script, method="cmaes", n_trials=1, run_dir=tmp_path / "runs2")


# -- stop rules ---------------------------------------------------------------------------------------------

CRASHES = "LAYERS = 3\nLEARNING_RATE = 0.01\nimport sys\nprint('loading data')\nraise RuntimeError('no data at /x')\n"
AT_DEFAULTS = "(LAYERS, WIDTH, LEARNING_RATE) == (3, 64, 0.01)"
CRASH_OFF_DEFAULT = (QUAD / "train.py").read_text().replace(
    "time.sleep(", f"if not {AT_DEFAULTS}:\n    raise RuntimeError('bad shape')\ntime.sleep(", 1
)


def test_a_failing_baseline_stops_the_study_at_once_with_the_error_and_log(tmp_path: Path) -> None:
    toml = '[space.params.LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\n'
    script = _project(tmp_path, body=CRASHES, toml=toml)
    out = _cli(["tune", str(script), "-m", "random", "--budget", "1h", "--run-dir", "runs"], cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "baseline" in out.stderr and "RuntimeError: no data at /x" in out.stderr and "loading data" in out.stderr
    assert "trial.log" in out.stderr and "--keep-going" in out.stderr
    (study,) = _studies(tmp_path / "runs")
    assert len(study.trials) == 1
    going = _cli(["tune", str(script), "-m", "random", "--n-trials", "3", "--run-dir", "runs", "--keep-going"],
                 cwd=tmp_path)  # fmt: skip
    assert going.returncode == 0, going.stderr
    assert len(_studies(tmp_path / "runs")[0].trials) == 4


def test_a_fixed_script_resumes_a_study_that_never_succeeded(tmp_path: Path) -> None:
    toml = '[space.params.LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\n'
    script = _project(tmp_path, body=CRASHES, toml=toml)
    with pytest.raises(HopelessStudy):
        centaur.tune(script, method="random", n_trials=3, run_dir=tmp_path / "runs")
    script.write_text("LAYERS = 3\nLEARNING_RATE = 0.01\nprint('val_bpb: 2.0')\nprint('training_seconds: 1.0')\n")
    result = centaur.tune(script, method="random", n_trials=2, run_dir=tmp_path / "runs")
    assert result.summary.n_ok == 2 and result.summary.n_finished == 3


def test_repeated_identical_failures_stop_the_study(tmp_path: Path) -> None:
    script = _project(tmp_path, body=CRASH_OFF_DEFAULT)
    with pytest.raises(HopelessStudy, match=r"5 trials in a row failed the same way \(crash: RuntimeError: bad shape"):
        centaur.tune(script, method="random", n_trials=50, run_dir=tmp_path / "runs")
    (study,) = _studies(tmp_path / "runs")
    assert len(study.trials) == 6 and _ok(study) == 1  # the baseline, then five crashes
    result = centaur.tune(script, method="random", n_trials=7, run_dir=tmp_path / "runs", keep_going=True)
    assert result.summary.n_finished == 13


def test_an_oom_baseline_does_not_stop_the_study(tmp_path: Path) -> None:
    body = (QUAD / "train.py").read_text().replace(
        "time.sleep(", f"if {AT_DEFAULTS}:\n    raise MemoryError('CUDA out of memory')\ntime.sleep(", 1
    )
    script = _project(tmp_path, body=body)
    result = centaur.tune(script, method="random", n_trials=4, run_dir=tmp_path / "runs")
    assert result.summary.failures.get("oom") == 1 and result.summary.n_finished == 4


def test_a_baseline_lost_twice_is_still_retried(tmp_path: Path) -> None:
    from centaur.study.lost import close_trial_as_lost

    script = _project(tmp_path)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    study = centaur.api.open_study(
        centaur.resolve_task(script), method="random", seed=0, budget_s=None, storage=url, study_name="l", penalty=None
    )
    for _ in range(2):
        trial = study.ask()
        trial.set_user_attr("config", {"LAYERS": 3})
        assert trial.user_attrs["proposal_source"] == "baseline"
        assert close_trial_as_lost(study, study._storage.get_trial(trial._trial_id), 1.0)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["proposal_source"] == "baseline"


# -- input validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--budget", "0"], "--budget"),
        (["--budget", "abc"], "--budget"),
        (["--penalty", "nan"], "--penalty"),
        (["--workers", "0"], "--workers"),
        (["--n-trials", "-1"], "--n-trials"),
        (["--trial-timeout", "0s"], "--trial-timeout"),
        (["-m", "cmaes", "-o", "popsize=abc"], "popsize"),
    ],
)
def test_bad_options_are_refused_naming_the_option_and_nothing_is_written(
    tmp_path: Path, args: list[str], culprit: str
) -> None:
    from typer.testing import CliRunner

    from centaur.cli import app

    script = _project(tmp_path)
    out = CliRunner().invoke(app, ["tune", str(script), "--run-dir", str(tmp_path / "runs"), *args])
    assert out.exit_code == 2, out.output
    assert culprit in out.output and "Traceback" not in out.output
    assert not (tmp_path / "runs" / "study.db").exists()


# -- terminal ----------------------------------------------------------------------------------------------


def test_status_and_the_stop_line_read_well_in_80_columns(tmp_path: Path) -> None:
    script = _project(tmp_path)
    out = _cli(["tune", str(script), "-m", "random", "--n-trials", "2", "--run-dir", "runs"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    stop = [line for line in lines if "stopped:" in line]
    assert stop and all(line.startswith("stopped:") for line in stop), out.stdout
    status = _cli(["status", "--run-dir", "runs"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "…" not in status.stdout and max(len(line) for line in status.stdout.splitlines()) <= 80
    for field in ("method", "trials", "best", "failures", "budget used", "fallbacks", "proj-random-seed0"):
        assert field in status.stdout, status.stdout


def test_one_gpu_pins_cuda_visible_devices_for_the_trials(tmp_path: Path) -> None:
    body = (QUAD / "train.py").read_text() + (
        "cvd = os.environ.get('CUDA_VISIBLE_DEVICES', '')\n"
        "open(os.path.join(os.path.dirname(__file__), 'cvd.txt'), 'w').write(cvd)\n"
    )
    script = _project(tmp_path, body=body)
    result = centaur.tune(script, method="random", n_trials=1, run_dir=tmp_path / "runs", gpus=["3"])
    (cvd,) = (tmp_path / "runs").rglob("cvd.txt")
    assert result.summary.n_ok == 1 and cvd.read_text() == "3"


@pytest.mark.slow
def test_a_second_ctrl_c_says_what_happened(tmp_path: Path) -> None:
    script = _project(tmp_path)
    proc = subprocess.Popen(
        [*CLI, "tune", str(script), "-m", "random", "--n-trials", "3", "--run-dir", "runs"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "QUAD_SLEEP": "60"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list((tmp_path / "runs").rglob("trial.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Ctrl-C again aborts it" in err and "recorded as lost" in err
    (study,) = _studies(tmp_path / "runs")
    assert [t.user_attrs.get("status") for t in study.trials if t.state.is_finished()] == ["lost"]


def test_a_bad_study_name_folder_is_sanitised() -> None:
    assert study_dirname("gpt-tpe-seed0") == "gpt-tpe-seed0"
    for name in ("..", "../../x", "/etc/passwd", ".hidden", "a b"):
        d = study_dirname(name)
        assert "/" not in d and not d.startswith(".") and d


def test_a_maximised_metric_is_shown_as_the_script_printed_it(tmp_path: Path) -> None:
    body = ("LEARNING_RATE = 0.01\nLAYERS = 3\nprint(f'accuracy: {0.5 + LAYERS / 100:.4f}')\n"
            "print('training_seconds: 1.0')\n")
    toml = ('[task]\nmetric = "accuracy"\ndirection = "maximize"\n\n'
            '[space.params.LAYERS]\ntype = "int"\nlow = 1\nhigh = 8\n')
    script = _project(tmp_path, body=body, toml=toml)
    result = centaur.tune(script, method="random", n_trials=4, run_dir=tmp_path / "runs")
    s = result.summary
    assert s.best_metric is not None and s.best_metric > 0.5 and s.best_value == pytest.approx(-s.best_metric)
    status = _cli(["status", "--run-dir", str(tmp_path / "runs")], cwd=tmp_path)
    assert f"{s.best_metric:.6f}" in status.stdout and f"-{s.best_metric:.6f}" not in status.stdout


def test_the_surrogate_validation_table_reads_in_80_columns() -> None:
    from rich.console import Console

    from centaur.surrogate.validate import _COLUMNS, report_tables

    row = {k: 0.123456 for _, k in _COLUMNS}
    report = {"data": {"include_code": False}, "summary": {"cross-seed": row},
              "splits": [dict(row, name="seed 0 -> 1"), dict(row, name="within Karpathy Agent (14 HPs, code)")]}
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    for table in report_tables(report, console.width):
        console.print(table)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert all(head in text for head, _ in _COLUMNS)
