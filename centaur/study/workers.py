"""Many workers on one study: a worker joins a study from its stored settings (`centaur worker`), and a
supervisor starts N of them on this machine, one GPU each (`centaur tune --workers N --gpus ...`).

Coordination is Optuna's own: every worker asks and tells through the shared storage (SQLite, journal
file or PostgreSQL); there is no scheduler of ours. The supervisor only starts processes, forwards stop
signals, restarts a worker killed by something else (the OOM killer) and shows progress.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from centaur.methods.base import MethodContext, MethodError, create_sampler, method_info
from centaur.paths import absolute_path, absolute_storage_url, study_dirname
from centaur.study.durable import with_retries
from centaur.study.identity import StudyIdentity
from centaur.study.loop import ProgressHook, StudyMismatch, TuneResult, check_writable, run_worker
from centaur.study.lost import close_lost_trials
from centaur.study.records import summarize
from centaur.study.schema import (
    IDENTITY_ATTR,
    SETTINGS_ATTR,
    STUDY_BUDGET,
    STUDY_METHOD,
    STUDY_PENALTY,
    STUDY_SEED,
)
from centaur.study.storage import open_storage
from centaur.tasks.base import Task
from centaur.tasks.spec import resolve_task
from centaur.tracking import TrackingSettings, build_trackers

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per worker slot, for workers killed by a signal we did not send


class WorkerError(ValueError):
    """Workers could not run (every one of them failed); the message quotes a worker's log."""


def check_parallel_method(method: str, workers: int) -> None:
    why = method_info(method).sequential
    if workers > 1 and why:
        raise MethodError(
            f"{method} cannot run with --workers: {why}. Run one `centaur tune` per GPU "
            "instead (CUDA_VISIBLE_DEVICES=K centaur tune ... --seed K), each with its own study"
        )


def build_sampler(
    task: Task, method: str, seed: int, options: dict[str, Any], penalty: float, trial_dir: Path, llm: Any
) -> optuna.samplers.BaseSampler:
    if llm is None and getattr(task, "config", None) is not None:
        llm = task.config.llm
    ctx = MethodContext(
        space=task.space,
        seed=seed,
        options=dict(options),
        task_description=task.describe(),
        penalty=penalty,
        run_dir=trial_dir,
        llm=llm,
    )
    return create_sampler(method, ctx)


def store_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    study.set_user_attr(SETTINGS_ATTR, settings)


def join_study(
    storage: str,
    study_name: str,
    *,
    run_root: Path,
    script: str | Path | None = None,
    n_trials: int | None = None,
    progress: ProgressHook | None = None,
) -> TuneResult:
    """Run one worker on an existing study, rebuilding task and method from the study's settings.
    `script` overrides the stored task path (the script lives elsewhere on this machine)."""
    storage = absolute_storage_url(storage)
    run_root = absolute_path(run_root)
    try:
        study = with_retries(
            lambda: optuna.load_study(study_name=study_name, storage=open_storage(storage)), "loading the study"
        )
    except KeyError:
        raise WorkerError(f"no study named {study_name!r} in the storage; start it with `centaur tune`") from None
    attrs = study.user_attrs
    settings = attrs.get(SETTINGS_ATTR)
    if not isinstance(settings, dict) or STUDY_METHOD not in attrs:
        raise WorkerError(
            f"study {study_name!r} was not started by `centaur tune` (no {SETTINGS_ATTR!r}); "
            "start it with `centaur tune ... --storage URL --study-name NAME` first"
        )
    spec = str(script) if script is not None else settings.get("task")
    if spec is None:
        raise WorkerError(f"study {study_name!r} was tuned on an in-process task object; pass the script path")
    task = resolve_task(spec)
    if settings.get("trial_timeout_s") is not None and hasattr(task, "config"):
        task.config.runner.trial_timeout_s = float(settings["trial_timeout_s"])
    method, seed = attrs[STUDY_METHOD], int(attrs[STUDY_SEED])
    check_parallel_method(method, 2)
    penalty = float(attrs.get(STUDY_PENALTY, 100.0))
    options = settings.get("method_options", {})
    stored = attrs.get(IDENTITY_ATTR)
    if isinstance(stored, dict):
        diffs = StudyIdentity.of(task, method=method, options=options, seed=seed, penalty=penalty).differences(stored)
        if diffs:
            raise StudyMismatch(
                f"cannot join study {study_name!r}: " + "; ".join(diffs) + ". Give --script the same training "
                "script (and centaur.toml) the study was started with"
            )
    trial_dir = Path(run_root) / study_dirname(study_name)
    sampler = build_sampler(task, method, seed, options, penalty, trial_dir, settings.get("llm"))
    study.sampler = sampler
    try:
        return run_worker(
            task,
            study,
            run_dir=trial_dir,
            budget_s=attrs.get(STUDY_BUDGET),
            n_trials=n_trials,
            penalty=penalty,
            progress=progress,
            keep_going=bool(settings.get("keep_going", False)),
            callbacks=build_trackers(TrackingSettings.parse(settings.get("tracking")), trial_dir / "tracking"),
        )
    finally:
        close = getattr(sampler, "close", None)
        if callable(close):
            close()


@dataclass
class _Slot:
    index: int
    env: dict[str, str]
    n_trials: int | None
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    exit_code: int | None = None


def parse_gpus(text: str | None) -> list[str]:
    if not text:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise ValueError(f"--gpus takes a comma-separated list of GPU indices, e.g. 0,1,2,3; got {text!r}")
    return gpus


def run_local_workers(
    workers: int,
    *,
    storage: str,
    study_name: str,
    run_root: Path,
    gpus: list[str] | None = None,
    n_trials: int | None = None,
    progress: ProgressHook | None = None,
    poll_s: float = 0.5,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> TuneResult:
    """Start `workers` processes of `centaur worker` on this machine and wait for them.

    Worker K sees GPU gpus[K % len(gpus)] only (CUDA_VISIBLE_DEVICES); its log is
    RUN_ROOT/STUDY/workers/worker-K.log. SIGTERM/SIGINT are forwarded (first: finish the running trials;
    second: abort them). A worker killed by a signal the supervisor did not send is restarted (at most
    MAX_RESTARTS times per slot); its running trial is closed as lost and retried. An LLM method without
    a configured endpoint gets one local LLM server here, shared by all workers (not one each).
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    trial_dir = Path(run_root) / study_dirname(study_name)
    check_writable(trial_dir)
    log_dir = trial_dir / "workers"
    log_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    server = _shared_llm_server(sampler, trial_dir)
    slots = []
    for k in range(workers):
        env = dict(os.environ)
        if server is not None:
            env["CENTAUR_LLM_BASE_URL"] = server.base_url
            # The workers see a URL, but it is the bundled server: keep its longer request timeout.
            env["CENTAUR_LLM_TIMEOUT_S"] = str(sampler.client.settings.request_timeout_s(local=True))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
        share = None if n_trials is None else n_trials // workers + (1 if k < n_trials % workers else 0)
        if share == 0:
            continue
        slots.append(_Slot(k, env, share, log_dir / f"worker-{k}.log"))

    def command(slot: _Slot) -> list[str]:
        # This module's own entry point: `centaur worker` without the whole CLI's imports (seconds per start).
        cmd = [sys.executable, "-m", "centaur.study.workers", "--storage", storage, "--study", study_name]
        cmd += ["--run-dir", str(run_root)]
        if slot.n_trials is not None:
            cmd += ["--n-trials", str(slot.n_trials)]
        return cmd

    def start(slot: _Slot) -> None:
        # A supervisor killed by SIGKILL cannot forward anything: the kernel then sends the worker SIGTERM
        # (PR_SET_PDEATHSIG; it records its running trial and stops). Linux only. ctypes is loaded here,
        # not in the forked child, where an import could deadlock.
        supervisor, prctl = os.getpid(), None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
            except (OSError, AttributeError):
                prctl = None

        def die_with_supervisor() -> None:
            if prctl is not None and prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0 and os.getppid() != supervisor:
                os.kill(os.getpid(), signal.SIGTERM)  # it died before the call: no signal would come

        with open(slot.log_path, "ab") as out:
            slot.proc = subprocess.Popen(
                command(slot),
                env=slot.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only; it forwards once
                preexec_fn=die_with_supervisor,
            )

    signals = {"count": 0}

    def forward(signum: int, frame: Any) -> None:
        signals["count"] += 1
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                os.kill(slot.proc.pid, signal.SIGTERM)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    summary = summarize(study)
    if progress:
        progress.on_start(summary)
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        for s in previous:
            signal.signal(s, forward)
        for slot in slots:
            start(slot)
        while True:
            running = 0
            for slot in slots:
                code = slot.proc.poll() if slot.proc is not None else slot.exit_code
                if code is None:
                    running += 1
                    continue
                if slot.proc is not None:
                    slot.exit_code, slot.proc = code, None
                    if code < 0 and signals["count"] == 0 and slot.restarts < MAX_RESTARTS:
                        log.warning("worker %d was killed by signal %d; restarting it", slot.index, -code)
                        slot.restarts += 1
                        slot.exit_code = None
                        start(slot)
                        running += 1
            summary = _report_new(study, seen, summary, progress)
            if running == 0:
                break
            time.sleep(poll_s)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for slot in slots:  # the supervisor itself is dying: do not leave workers behind
            if slot.proc is not None and slot.proc.poll() is None:
                os.kill(slot.proc.pid, signal.SIGTERM)
        if server is not None:
            server.stop()
    with_retries(lambda: close_lost_trials(study), "closing trials of dead workers")
    summary = _report_new(study, seen, summary, progress)
    if any(slot.exit_code not in (0, None) for slot in slots):
        check_writable(trial_dir)  # the likeliest common cause, and its message is the clearest
    reason = _stop_reason(slots, summary, signals["count"] > 0)
    if progress:
        progress.on_stop(reason, summary)
    return TuneResult(study, summary, reason)


def _shared_llm_server(sampler: Any, log_dir: Path) -> Any:
    client = getattr(sampler, "client", None)
    settings = getattr(client, "settings", None)
    if settings is None or getattr(settings, "base_url", "unset") is not None:
        return None
    from centaur.llm.local import LocalServer

    return LocalServer.from_settings(settings, log_dir=log_dir).start()


def _report_new(study: optuna.Study, seen: set[int], summary: Any, progress: ProgressHook | None) -> Any:
    trials = with_retries(lambda: study.get_trials(deepcopy=False), "reading the study")
    new = [t for t in trials if t.state.is_finished() and t.number not in seen]
    if not new:
        return summary
    summary = summarize(study, trials)
    for t in sorted(new, key=lambda t: t.datetime_complete or t.datetime_start):
        seen.add(t.number)
        if progress:
            progress.on_trial_end(t, summary)
    return summary


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:].strip()
    except OSError:
        return ""


def _stop_reason(slots: list[_Slot], summary: Any, signalled: bool) -> str:
    failed = [s for s in slots if s.exit_code not in (0, None) and not (signalled and s.exit_code < 0)]
    spent = summary.budget_s is not None and summary.used_s >= summary.budget_s
    if failed and len(failed) == len(slots) and not spent:
        s = failed[0]
        raise WorkerError(
            f"all {len(slots)} workers failed; worker {s.index} exited with code {s.exit_code}, "
            f"its log {s.log_path} ends with:\n{_tail(s.log_path)}"
        )
    if signalled:
        reason = "stopped by signal"
    elif spent:
        reason = "budget spent"
    else:
        reason = "workers finished"
    if failed:
        reason += "; " + ", ".join(f"worker {s.index} exited with code {s.exit_code} ({s.log_path})" for s in failed)
    return reason


class LineProgress:
    """One plain line per trial, for worker logs (no live display)."""

    def on_start(self, summary: Any) -> None:
        print(f"joined {summary.name}: {summary.n_finished} trials finished, {summary.n_running} running", flush=True)

    def on_trial_start(self, number: int, config: dict[str, Any]) -> None:
        print(f"trial {number} started: {config}", flush=True)

    def on_trial_end(self, trial: Any, summary: Any) -> None:
        status = trial.user_attrs.get("status", trial.state.name.lower())
        print(f"trial {trial.number} {status} value {trial.value} cost {trial.user_attrs.get('cost_s')}", flush=True)

    def on_stop(self, reason: str, summary: Any) -> None:
        print(f"stopped: {reason}; used {summary.used_s:.1f} s of {summary.budget_s}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m centaur.study.workers --storage URL --study NAME [--run-dir D] [--n-trials K] [--script P]`:
    what the supervisor starts; the same as `centaur worker --quiet`."""
    import argparse

    from centaur.errors import USER_ERRORS

    ap = argparse.ArgumentParser(prog="centaur-worker")
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--run-dir", default="centaur-runs")
    ap.add_argument("--n-trials", type=int)
    ap.add_argument("--script")
    args = ap.parse_args(argv)
    try:
        result = join_study(
            args.storage, args.study, run_root=Path(args.run_dir), script=args.script, n_trials=args.n_trials,
            progress=LineProgress(),
        )  # fmt: skip
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{result.summary.name}: {result.stop_reason}", flush=True)
    return 0


if __name__ == "__main__":
    from centaur.entry import quiet_optuna

    quiet_optuna()
    sys.exit(main())
