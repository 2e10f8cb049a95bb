"""Fault injection with real processes and real PostgreSQL: workers killed or stopped mid-trial, the LLM
server killed, PostgreSQL restarted, the run directory turning read-only or full, a corrupt centaur.toml.

Each test checks the same invariants (tests/study_checks.py): no finished trial lost, none duplicated,
budget accounting exact with the documented overshoot bound, and the study can complete.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from study_checks import PAR, assert_study_sound, eval_lines

from centaur.study.storage import StorageError, open_storage

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLI = [sys.executable, "-m", "centaur.cli_main"]
pytestmark = pytest.mark.slow


def _postgres_or_skip() -> None:
    pytest.importorskip("psycopg2")
    try:
        open_storage(PG_URL)
    except StorageError as e:
        pytest.skip(f"PostgreSQL not reachable: {e}")


def _env(log: Path, sleep: float, cost: float, **extra: str) -> dict[str, str]:
    return {**os.environ, "PAR_EVAL_LOG": str(log), "PAR_SLEEP": str(sleep), "PAR_COST": str(cost),
            "CENTAUR_HEARTBEAT_S": "0.25", "COLUMNS": "400", **extra}  # fmt: skip


def _tune(storage: str, name: str, run_dir: Path, budget: str, workers: int, *more: str) -> list[str]:
    return [*CLI, "tune", str(PAR), "--budget", budget, "--workers", str(workers), "--storage", storage,
            "--study-name", name, "--run-dir", str(run_dir), *more]  # fmt: skip


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def _wait_for(pred: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = pred()
        except Exception:  # the study may not exist yet, or the database may be restarting
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _finish(proc: subprocess.Popen, timeout: float = 150.0) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"did not finish:\n{out[-3000:]}") from None
    return out


def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def test_sigkill_a_worker_mid_trial(tmp_path: Path) -> None:
    _postgres_or_skip()
    name, log = f"kill-{uuid.uuid4().hex[:8]}", tmp_path / "evals.jsonl"
    proc = _popen(_tune(PG_URL, name, tmp_path / "runs", "14s", 3), _env(log, 1.5, 1.5))

    def victim() -> Any:
        study = _study(PG_URL, name)
        done = study.get_trials(states=(TrialState.COMPLETE,))
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                   if "owner" in t.user_attrs and time.time() - t.user_attrs["started_at"] > 0.6]  # fmt: skip
        return running[0] if len(done) >= 3 and running else None

    t = _wait_for(victim, what="a running trial after 3 finished ones")
    os.kill(t.user_attrs["owner"]["pid"], signal.SIGKILL)
    killed_after = time.time() - t.user_attrs["started_at"]
    out = _finish(proc)
    assert proc.returncode == 0, out
    study = _study(PG_URL, name)
    trials = study.get_trials()
    lost = trials[t.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "lost"
    assert killed_after - 0.6 <= lost.user_attrs["cost_s"] <= killed_after  # the heartbeat's precision
    retry = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == lost.params
    assert t.number not in {e["trial"] for e in eval_lines(log)}  # the orphaned training run died too
    # The killed worker was replaced: 4 workers joined. (Whether the replacement gets a trial before the
    # budget is spent depends on how fast a process starts on a loaded machine, so that is not asserted.)
    joined = [ln for f in (tmp_path / "runs" / name / "workers").glob("worker-*.log")
              for ln in f.read_text().splitlines() if ln.startswith(f"joined {name}")]  # fmt: skip
    assert len(joined) == 4, joined
    assert_study_sound(study, eval_lines(log), budget_s=14.0, workers=3, ok_cost_s=1.5)


def test_sigterm_finishes_running_trials_then_resume(tmp_path: Path) -> None:
    name, log = "term", tmp_path / "evals.jsonl"
    storage = f"journal:{tmp_path / 'journal.log'}"
    proc = _popen(_tune(storage, name, tmp_path / "runs", "6s", 2), _env(log, 1.5, 1.0))
    _wait_for(lambda: len(_study(storage, name).get_trials(states=(TrialState.COMPLETE,))) >= 2
              and len(_study(storage, name).get_trials(states=(TrialState.RUNNING,))) == 2, what="2 running trials")
    running = {t.number for t in _study(storage, name).get_trials(states=(TrialState.RUNNING,))}
    os.kill(proc.pid, signal.SIGTERM)
    out = _finish(proc)
    assert proc.returncode == 0 and "stopped by signal" in out, out
    study = _study(storage, name)
    assert all(study.trials[n].state == TrialState.COMPLETE for n in running)  # finished and recorded
    assert not [t for t in study.trials if t.state == TrialState.FAIL]
    assert_study_sound(study, eval_lines(log), budget_s=None, workers=2, ok_cost_s=1.0)
    assert study.trials[-1].state == TrialState.COMPLETE
    resumed = subprocess.run(_tune(storage, name, tmp_path / "runs", "6s", 2), env=_env(log, 0.5, 1.0),
                             capture_output=True, text=True, timeout=150)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_study_sound(_study(storage, name), eval_lines(log), budget_s=6.0, workers=2, ok_cost_s=1.0)


def test_llm_server_killed_mid_study(tmp_path: Path) -> None:
    name, log = "llm", tmp_path / "evals.jsonl"
    storage = f"journal:{tmp_path / 'journal.log'}"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE_FAKE_LLM], cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True
    )
    try:
        base_url = server.stdout.readline().strip()
        env = _env(log, 0.5, 1.0, CENTAUR_LLM_BASE_URL=base_url, CENTAUR_LLM_MAX_RETRIES="1",
                   CENTAUR_LLM_TIMEOUT_S="5")  # fmt: skip
        cmd = _tune(storage, name, tmp_path / "runs", "12s", 2, "-m", "agent-hps", "-o", "fallback=tpe",
                    "-o", "max_unavailable_in_row=1000")  # fmt: skip
        proc = _popen(cmd, env)
        _wait_for(lambda: sum(t.user_attrs.get("proposal_source") == "llm" and t.state.is_finished()
                              for t in _study(storage, name).trials) >= 3, what="3 LLM trials")  # fmt: skip
        server.kill()
        server.wait()
        out = _finish(proc)
    finally:
        server.kill()
    assert proc.returncode == 0, out
    study = _study(storage, name)
    sources = [t.user_attrs.get("proposal_source") for t in study.trials]
    assert sources.count("llm") >= 3
    fallbacks = [t for t in study.trials if t.user_attrs.get("proposal_source") == "llm-fallback:tpe"]
    assert fallbacks and all(t.user_attrs["llm_error"].startswith("LLMUnavailable") for t in fallbacks)
    assert sources.index("llm-fallback:tpe") > sources.index("llm")  # the fallback came after the server died
    assert_study_sound(study, eval_lines(log), budget_s=12.0, workers=2, ok_cost_s=1.0)


SERVE_FAKE_LLM = """
import json, random, threading
from fake_llm_server import FakeLLMServer
rng, lock = random.Random(0), threading.Lock()
def answer(body):
    with lock:
        return {"content": json.dumps({"ALPHA": round(rng.random(), 4), "DEPTH": rng.randint(1, 8), "RATE": 0.01})}
server = FakeLLMServer(responder=answer).start()
print(server.base_url, flush=True)
threading.Event().wait()
"""


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Callable[[float], None]]]:
    """A PostgreSQL cluster of our own on a free port, so restarting it disturbs nobody else's tests."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else []
    bindir = bins[-1] if bins else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    if bindir is None:
        pytest.skip("no initdb/pg_ctl to run a private PostgreSQL")
    pytest.importorskip("psycopg2")
    root = Path(tempfile.mkdtemp(prefix="centaur-pg-"))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, opts = root / "data", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    ctl = [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    init = subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                          capture_output=True, text=True)  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot initdb a private PostgreSQL: {init.stderr[-300:]}")
    subprocess.run([*ctl, "-o", opts, "start"], check=True, capture_output=True)

    def restart(down_s: float) -> None:
        subprocess.run([*ctl, "-m", "fast", "stop"], check=True, capture_output=True)
        time.sleep(down_s)
        subprocess.run([*ctl, "-o", opts, "start"], check=True, capture_output=True)

    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", restart
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_restarted_mid_study(tmp_path: Path, private_postgres: tuple[str, Callable[[float], None]]) -> None:
    url, restart = private_postgres
    name, log = "pgrestart", tmp_path / "evals.jsonl"
    # A trial whose creation committed just as the connection dropped has no owner yet: others close it
    # once it is CENTAUR_STALE_AFTER_S old (shortened here so that happens within the test).
    env = _env(log, 1.0, 1.0, CENTAUR_STALE_AFTER_S="4")
    proc = _popen(_tune(url, name, tmp_path / "runs", "12s", 3, "-m", "cmaes"), env)
    _wait_for(lambda: len(_study(url, name).get_trials(states=(TrialState.COMPLETE,))) >= 3, what="3 trials")
    restart(3.0)  # down for 3 s: trials finishing meanwhile must be kept and written afterwards
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert "storage unavailable" in "".join(p.read_text() for p in (tmp_path / "runs" / name / "workers").iterdir())
    study = _study(url, name)
    assert_study_sound(study, eval_lines(log), budget_s=12.0, workers=3, ok_cost_s=1.0)
    assert not list((tmp_path / "runs" / name / "unwritten").glob("*.json"))


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_run_directory_read_only_or_full(tmp_path: Path, fault: str) -> None:
    """The run directory turns read-only, or its file system fills up, mid-study (in a private mount
    namespace): a clear error, the study intact, and the same command resumes once it is usable again."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs `unshare -m` (a private mount namespace) to make a directory read-only or full")
    name, log = "disk", tmp_path / "evals.jsonl"
    storage, run_dir = f"journal:{tmp_path / 'store' / 'journal.log'}", tmp_path / "runs"
    cmd = " ".join(f"'{c}'" for c in _tune(storage, name, run_dir, "30s", 2))
    target = run_dir / name
    if fault == "read-only":  # a read-only bind mount stacked on the directory: same files, no writes
        setup, flip = "true", f"mount --bind {target} {target} && mount -o remount,bind,ro {target} {target}"
        target.mkdir(parents=True)
    else:  # the run directory on a small file system of its own, filled up mid-study
        setup, flip = f"mkdir -p {run_dir} && mount -t tmpfs -o size=2m none {run_dir}", (
            f"(dd if=/dev/zero of={run_dir}/filler bs=4k 2>/dev/null; true)")
    script = (f"{setup} && {{ {cmd} & P=$!; while [ \"$(cat {log} 2>/dev/null | wc -l)\" -lt 3 ]; do sleep 0.1; "
              f"done; {flip}; wait $P; echo centaur-exit=$?; }}")  # fmt: skip
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], env=_env(log, 0.5, 1.0), capture_output=True,
                         text=True, timeout=150)  # fmt: skip
    out = res.stdout + res.stderr
    assert "centaur-exit=2" in out, out
    assert "not writable" in out and "Traceback" not in out
    study = _study(storage, name)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert_study_sound(study, eval_lines(log), budget_s=None, workers=2, ok_cost_s=1.0)
    lost = [t for t in study.trials if t.user_attrs.get("status") == "lost"]
    assert lost and all("run directory not writable" in t.user_attrs["error"] for t in lost)
    # The same command resumes (a smaller --budget would be refused: a study's budget never shrinks).
    resumed = subprocess.run(_tune(storage, name, run_dir, "30s", 2), env=_env(log, 0.3, 1.0), capture_output=True,
                             text=True, timeout=150)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = _study(storage, name)
    assert_study_sound(study, eval_lines(log), budget_s=30.0, workers=2, ok_cost_s=1.0)
    first_losses = {t.number for t in lost if "retry_of" not in t.user_attrs}  # a retry is not retried again
    assert {t.user_attrs.get("retry_of") for t in study.trials} >= first_losses


def test_corrupt_centaur_toml(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    shutil.copytree(PAR.parent, task_dir)
    script, toml = task_dir / "train.py", task_dir / "centaur.toml"
    name, log = "toml", tmp_path / "evals.jsonl"
    storage, run_dir = f"journal:{tmp_path / 'journal.log'}", tmp_path / "runs"
    env = _env(log, 0.2, 1.0)
    tune = [*CLI, "tune", str(script), "--budget", "5s", "--n-trials", "2", "--storage", storage,
            "--study-name", name, "--run-dir", str(run_dir)]  # fmt: skip
    assert subprocess.run(tune, env=env, capture_output=True, timeout=120).returncode == 0
    good = toml.read_text()
    toml.write_text(good.replace("[space.params.DEPTH]", "[space.params.DEPTH\n"))
    worker = [*CLI, "worker", "--storage", storage, "--study", name, "--run-dir", str(run_dir), "--quiet"]
    res = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "centaur.toml: not valid TOML" in res.stderr and "Traceback" not in res.stderr
    study = _study(storage, name)
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    toml.write_text(good)
    res = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "budget spent" in res.stdout, res.stdout + res.stderr
    assert_study_sound(_study(storage, name), eval_lines(log), budget_s=5.0, workers=1, ok_cost_s=1.0)
