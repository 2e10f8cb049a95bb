"""Trial hygiene, with real subprocesses: every process a trial starts dies with it (setsid escapes
included), the metric comes from the whole output, trial.log is capped, workers die with their
supervisor, and secrets never reach a trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from study_checks import PAR

from centaur.config import ConfigError, load_config
from centaur.runner import parse_metrics, run_script
from centaur.tasks.base import TrialStatus
from centaur.tasks.script import ScriptTask

LOG_CAP = 1 * 2**20 + 4 * 2**20  # the default head + tail that trial.log keeps


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids a test expects dead; whatever is left is killed afterwards (the code under test may fail)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _script(tmp_path: Path, source: str, toml: str | None = None) -> Path:
    task = tmp_path / "task"
    task.mkdir(exist_ok=True)
    script = task / "train.py"
    script.write_text(textwrap.dedent(source))
    if toml is not None:
        (task / "centaur.toml").write_text(textwrap.dedent(toml))
    return script


def _evaluate(script: Path, tmp_path: Path):
    task = ScriptTask.from_script(script)
    return task.evaluate(task.space.defaults(), trial_number=0, run_dir=tmp_path / "runs")


def _run(script: Path, tmp_path: Path, **kwargs):
    return run_script(script, cwd=script.parent, log_path=tmp_path / "trial.log", timeout_s=30, **kwargs)


# -- every process of a trial dies with it -------------------------------------------------------
def test_a_popen_child_is_killed_when_the_trial_ends(tmp_path: Path, strays: list[int]) -> None:
    script = _script(tmp_path, """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"child_pid: {child.pid}", flush=True)
        print("val_bpb: 1.0")
    """)
    start = time.monotonic()
    proc = _run(script, tmp_path)
    pid = int(parse_metrics(proc.output)["child_pid"])
    strays.append(pid)
    assert proc.returncode == 0, proc.output
    assert not _alive(pid), "the trial's child outlived it"
    assert time.monotonic() - start < 5


def test_a_child_that_calls_setsid_is_killed_when_the_trial_ends(tmp_path: Path, strays: list[int]) -> None:
    script = _script(tmp_path, """
        import os, time
        pid = os.fork()
        if pid == 0:
            os.setsid()  # a new session and group: killpg of the trial's group misses it
            time.sleep(60)
            os._exit(0)
        print(f"child_pid: {pid}", flush=True)
        print("val_bpb: 1.0")
    """)
    proc = _run(script, tmp_path)
    pid = int(parse_metrics(proc.output)["child_pid"])
    strays.append(pid)
    assert proc.returncode == 0, proc.output
    assert not _alive(pid), "a child that called setsid() outlived the trial"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).ppid() != os.getpid(), "not reaped"


def test_a_double_forked_setsid_grandchild_is_killed_when_the_trial_ends(tmp_path: Path, strays: list[int]) -> None:
    script = _script(tmp_path, """
        import os, time
        middle = os.fork()
        if middle == 0:
            grandchild = os.fork()
            if grandchild == 0:
                os.setsid()
                time.sleep(60)
                os._exit(0)
            print(f"grandchild_pid: {grandchild}", flush=True)
            os._exit(0)  # the grandchild is an orphan now: it is re-parented
        os.waitpid(middle, 0)
        print("val_bpb: 1.0")
    """)
    proc = _run(script, tmp_path)
    pid = int(parse_metrics(proc.output)["grandchild_pid"])
    strays.append(pid)
    assert proc.returncode == 0, proc.output
    assert not _alive(pid), "a double-forked, setsid() grandchild outlived the trial"


# -- the metric comes from the whole output; the log is capped -----------------------------------------
def test_the_metric_is_found_before_300_kb_of_further_output(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        LEARNING_RATE = 0.1
        print("val_bpb: 1.5", flush=True)
        for i in range(3000):
            print(f"{i:06d} " + "x" * 93)
    """)
    r = _evaluate(script, tmp_path)
    assert r.status is TrialStatus.OK, r.error
    assert r.value == pytest.approx(1.5)


def test_a_20_mb_output_leaves_a_capped_log_with_head_tail_and_a_cut_note(tmp_path: Path) -> None:
    lines, width = 200_000, 100
    script = _script(tmp_path, f"""
        import sys
        print("FIRST LINE", flush=True)
        print("lr_seen: 0.25", flush=True)
        block = "".join(f"{{i:08d}} " + "y" * {width - 10} + "\\n" for i in range(1000))
        for _ in range({lines // 1000}):
            sys.stdout.write(block)
        print("LAST LINE")
        print("val_bpb: 2.5")
    """)
    start = time.monotonic()
    proc = _run(script, tmp_path)
    assert time.monotonic() - start < 5
    log = tmp_path / "trial.log"
    text = log.read_text()
    size = log.stat().st_size
    assert proc.returncode == 0
    assert size <= LOG_CAP + 1024, f"trial.log is {size} bytes"
    assert text.startswith("FIRST LINE\nlr_seen: 0.25\n00000000 ")
    assert text.endswith("LAST LINE\nval_bpb: 2.5\n")
    notes = re.findall(r"^\[centaur: \d+ bytes cut from the middle of this log.*\]$", text, re.MULTILINE)
    assert len(notes) == 1, text[2**20 - 200: 2**20 + 400]
    cut, head, tail = map(int, re.findall(r"\d+", notes[0]))
    total = len("FIRST LINE\nlr_seen: 0.25\n") + lines * width + len("LAST LINE\nval_bpb: 2.5\n")
    assert cut == total - head - tail and head == 2**20 and 4 * 2**20 - 64 * 1024 < tail <= 4 * 2**20
    assert size - head - tail - len(notes[0]) in (1, 2)  # the note's line break, and one before it mid-line
    assert proc.metrics == {"lr_seen": 0.25, "val_bpb": 2.5}  # the cut part was scanned too


def test_metric_scanner_handles_split_lines_carriage_returns_and_overlong_lines() -> None:
    from centaur.runner.outcome import MetricScanner, classify

    s = MetricScanner()
    for chunk in (b"step 1\rloss: 3.0\rlo", b"ss: 2.0\nval_b", b"pb: 1.", b"25\n", b"x" * 100_000,
                  b"val_bpb: 9.0\n", b"tail: 7"):  # the 'val_bpb: 9.0' ends an overlong line: not a metric
        s.feed(chunk)
    metrics = s.result()
    assert metrics == {"loss": 2.0, "val_bpb": 1.25, "tail": 7.0}
    outcome = classify(0, "no metric in the tail\n", "val_bpb", timed_out=False, metrics=metrics)
    assert outcome.status is TrialStatus.OK and outcome.value == 1.25


# -- secrets ---------------------------------------------------------------------------------------------
ENV_PROBE = """
    import os
    LEARNING_RATE = 0.1
    for name in ("CENTAUR_LLM_API_KEY", "MY_SECRET_TOKEN", "FOO", "PATH"):
        print(f"has_{name.lower()}: {int(name in os.environ)}")
    print("val_bpb: 1.0")
"""


@pytest.fixture
def secrets_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTAUR_LLM_API_KEY", "x")
    monkeypatch.setenv("MY_SECRET_TOKEN", "y")
    monkeypatch.setenv("FOO", "1")


def _env_seen(tmp_path: Path, toml: str | None) -> dict[str, float]:
    script = _script(tmp_path, ENV_PROBE, toml)
    r = _evaluate(script, tmp_path)
    assert r.status is TrialStatus.OK, r.error
    return {k.removeprefix("has_"): v for k, v in r.metrics.items() if k.startswith("has_")}


def test_by_default_trials_get_a_scrubbed_environment(tmp_path: Path, secrets_set: None) -> None:
    assert load_config(None).runner.scrub_env
    seen = _env_seen(tmp_path, None)
    assert seen == {"centaur_llm_api_key": 0, "my_secret_token": 0, "foo": 0, "path": 1}


def test_env_passthrough_passes_a_variable_but_never_a_secret(tmp_path: Path, secrets_set: None) -> None:
    seen = _env_seen(tmp_path, """
        [runner]
        env_passthrough = ["F?O", "CENTAUR_LLM_API_KEY", "MY_SECRET_*"]
    """)
    assert seen == {"centaur_llm_api_key": 0, "my_secret_token": 0, "foo": 1, "path": 1}


def test_without_scrubbing_secrets_still_never_reach_a_trial(tmp_path: Path, secrets_set: None) -> None:
    seen = _env_seen(tmp_path, """
        [runner]
        scrub_env = false
    """)
    assert seen == {"centaur_llm_api_key": 0, "my_secret_token": 0, "foo": 1, "path": 1}


@pytest.mark.parametrize("value", ['"FOO"', "[1, 2]", '[""]'])
def test_env_passthrough_must_be_a_list_of_names(tmp_path: Path, value: str) -> None:
    path = tmp_path / "centaur.toml"
    path.write_text(f"[runner]\nenv_passthrough = {value}\n")
    with pytest.raises(ConfigError, match=r"\[runner\] env_passthrough"):
        load_config(path)


# -- workers die with their supervisor ------------------------------------------------------------------
def _workers(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [p for p in root.children() if "centaur.study.workers" in " ".join(p.cmdline())]
    except psutil.Error:
        return []


@pytest.mark.slow
def test_workers_stop_when_their_supervisor_is_sigkilled(tmp_path: Path, strays: list[int]) -> None:
    storage = f"journal:{tmp_path / 'journal.log'}"
    cmd = [sys.executable, "-m", "centaur.cli_main", "tune", str(PAR), "--budget", "300s", "--workers", "2",
           "--storage", storage, "--study-name", "orphans", "--run-dir", str(tmp_path / "runs")]  # fmt: skip
    env = {**os.environ, "PAR_SLEEP": "0.5", "PAR_COST": "0.5", "COLUMNS": "200"}
    out = open(tmp_path / "tune.log", "wb")  # noqa: SIM115 - kept open for the subprocess
    supervisor = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    strays.append(supervisor.pid)
    try:
        deadline = time.monotonic() + 90
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and supervisor.poll() is None:
            workers = _workers(psutil.Process(supervisor.pid))
            joined = [f for f in (tmp_path / "runs").rglob("worker-*.log") if "joined" in f.read_text()]
            if len(workers) == 2 and len(joined) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, (tmp_path / "tune.log").read_text()[-3000:]
        strays.extend(w.pid for w in workers)
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(w.pid) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w.pid) for w in workers), "workers outlived their SIGKILLed supervisor"
    finally:
        out.close()
