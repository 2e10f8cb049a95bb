"""The tuning loop of one worker: ask the sampler, run the trial, record it, until the budget is spent."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from centaur.runner.progress import ProgressPattern, watching
from centaur.space import SearchSpace
from centaur.study import optuna_private as op
from centaur.study import schema
from centaur.study.durable import PendingResult, ResultJournal, StorageUnavailable, with_retries, write_result
from centaur.study.identity import StudyIdentity
from centaur.study.lost import HEARTBEAT_S, close_lost_trials, close_trial_as_lost, owner_tag
from centaur.study.optuna_private import set_user_attrs, suggest_all
from centaur.study.pruning import (
    PRUNED_STATUS,
    PRUNER_KEY,
    PrunerError,
    PrunerSettings,
    TrialPruning,
    fidelity_full,
    progress_text,
    pruner_differences,
    study_pruner,
)
from centaur.study.records import RunningSummary, StudySummary, is_success
from centaur.study.schema import (
    ALIVE_ATTR,
    CONFIG_ATTR,
    COST_ATTR,
    IDENTITY_ATTR,
    OWNER_ATTR,
    SAMPLER_ATTR,
    SOURCE_ATTR,
    STARTED_ATTR,
    STATUS_ATTR,
    STUDY_BUDGET,
    STUDY_METHOD,
    STUDY_PENALTY,
    STUDY_SEED,
    STUDY_SPACE,
    STUDY_TASK,
    TOLD_ATTR,
    WALL_ATTR,
)
from centaur.study.storage import open_storage
from centaur.tasks.base import Task, TrialResult, TrialStatus
from centaur.tracking.callbacks import Callback, notify
from centaur.units import format_duration

log = logging.getLogger(__name__)


class StudyMismatch(ValueError):
    """An existing study was created with other settings than this run asks for."""


class RunDirError(ValueError):
    """The run directory cannot be written (read-only, full, no permission); the study is left intact."""


# errno values that mean "the disk", not the configuration, is at fault.
_DISK_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}


def check_writable(run_dir: Path) -> None:
    """Raise RunDirError unless a file can be created and written in `run_dir`."""
    probe = Path(run_dir) / f".probe-{os.getpid()}"
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunDirError(
            f"run directory {run_dir} is not writable ({e.strerror or e}); free space or fix its permissions, "
            "then run the same command again to resume (the study itself is intact)"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class ProgressHook(Protocol):
    def on_start(self, summary: StudySummary) -> None: ...
    def on_trial_start(self, number: int, config: dict[str, Any]) -> None: ...
    def on_trial_end(self, trial: FrozenTrial, summary: StudySummary) -> None: ...
    def on_stop(self, reason: str, summary: StudySummary) -> None: ...


@dataclass
class TuneResult:
    study: optuna.Study
    summary: StudySummary
    stop_reason: str

    @property
    def best_value(self) -> float | None:
        return self.summary.best_value

    @property
    def best_config(self) -> dict[str, Any] | None:
        return self.summary.best_config


class StopFlag:
    """First SIGTERM/SIGINT: finish and record the running trial, then stop. Second: abort it now."""

    def __init__(self) -> None:
        self.requested = False
        self.signals = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, frame: Any) -> None:
            self.signals += 1
            self.requested = True
            if self.signals > 1:
                raise KeyboardInterrupt
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(
                    "\nstopping: the running trial finishes and is recorded first (Ctrl-C again aborts it)\n"
                )
                sys.stderr.flush()

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _persistent(study: optuna.Study) -> bool:
    """False for an in-memory study (simulated benchmarks): no other process can see it, so heartbeats
    and the local copy of unwritten results would only cost time."""
    return not isinstance(op.storage_of(study), optuna.storages.InMemoryStorage)


class Heartbeat:
    """Writes `alive_at` on the running trial so others can tell a dead worker and its real cost."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(study, trial_id), daemon=True)

    def _run(self, study: optuna.Study, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat only makes a lost trial's cost coarser
                op.storage_of(study).set_trial_user_attr(trial_id, ALIVE_ATTR, time.time())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


DEFAULT_BUDGET_S = 24 * 3600.0  # a new study's budget when none is given (the reference study's)


def open_study(
    task: Task,
    *,
    method: str,
    seed: int,
    budget_s: float | None,
    storage: str,
    study_name: str,
    penalty: float | None,
    sampler: optuna.samplers.BaseSampler | None = None,
    options: dict[str, Any] | None = None,
    notices: list[str] | None = None,
    default_budget_s: float | None = DEFAULT_BUDGET_S,
    pruner: PrunerSettings | None = None,
) -> optuna.Study:
    """Create or load the study; on creation, record what defines it and enqueue the script's defaults
    as trial 0 (the baseline).

    A resumed study must match what defines it (script, space, method, options, seed, penalty), or
    StudyMismatch names the differences. `budget_s` None keeps the study's budget (a new study gets
    `default_budget_s`; None: no budget); a larger one extends it, with a line in `notices`; a smaller
    one is refused. `penalty` None keeps the study's (100 for a new one). `pruner` (None: "none") is part
    of what defines the study: recorded in its identity when not "none", and a resume must match it (a
    study that recorded no pruner has "none").
    """
    pruner = pruner or PrunerSettings()
    study = optuna.create_study(
        storage=open_storage(storage), study_name=study_name, sampler=sampler, direction="minimize", load_if_exists=True
    )
    attrs = study.user_attrs
    stored_penalty = attrs.get(STUDY_PENALTY)
    penalty = float(penalty if penalty is not None else stored_penalty if stored_penalty is not None else 100.0)
    identity = StudyIdentity.of(task, method=method, options=dict(options or {}), seed=seed, penalty=penalty)
    identity_dict = identity.as_dict()
    if pruner.active:  # studies without a pruner keep the identity they always had
        identity_dict[PRUNER_KEY] = pruner.as_dict()
    if STUDY_METHOD in attrs:
        stored = attrs.get(IDENTITY_ATTR)
        if isinstance(stored, dict):
            diffs = identity.differences(stored) + pruner_differences(pruner, stored)
            script_only = bool(diffs) and not (
                identity.differences({**stored, "task_hash": identity.task_hash}) + pruner_differences(pruner, stored)
            )
            if script_only and not any(is_success(t) for t in study.get_trials(deepcopy=False)):
                # Only the script changed, and nothing it measured succeeded: the usual fix of a broken script.
                diffs = []
                study.set_user_attr(IDENTITY_ATTR, identity_dict)
                if notices is not None:
                    notices.append(f"study {study_name!r}: the script changed; no trial had succeeded, so it goes on")
        else:  # a study from before identities were recorded: what it has must still match
            diffs = [
                f"{key} is {want!r}, the study's is {attrs.get(key)!r}"
                for key, want in ((STUDY_METHOD, method), (STUDY_SEED, seed), (STUDY_PENALTY, penalty))
                if attrs.get(key) != want
            ] + pruner_differences(pruner, None)
        if diffs:
            raise StudyMismatch(
                f"study {study_name!r} cannot be resumed with these settings: " + "; ".join(diffs) + ". "
                "Run it again with the settings it was started with, or give another --study-name to start a new study"
            )
        if not isinstance(stored, dict):
            study.set_user_attr(IDENTITY_ATTR, identity_dict)
    else:
        study.set_user_attr(STUDY_METHOD, method)
        study.set_user_attr(STUDY_SEED, seed)
        study.set_user_attr(STUDY_TASK, task.name)
        study.set_user_attr(STUDY_PENALTY, penalty)
        study.set_user_attr(STUDY_SPACE, task.space.as_record())
        study.set_user_attr(IDENTITY_ATTR, identity_dict)
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(task.space.encode(task.space.defaults()), user_attrs={SOURCE_ATTR: "baseline"})
    current = attrs.get(STUDY_BUDGET) if STUDY_METHOD in attrs else None
    if budget_s is None:
        if STUDY_METHOD not in attrs and default_budget_s is not None:
            study.set_user_attr(STUDY_BUDGET, float(default_budget_s))
    elif current is None:
        study.set_user_attr(STUDY_BUDGET, float(budget_s))
    elif budget_s > current:
        study.set_user_attr(STUDY_BUDGET, float(budget_s))
        if notices is not None:
            notices.append(
                f"study {study_name!r}: budget extended from {format_duration(current)} to {format_duration(budget_s)}"
            )
    elif budget_s < current:
        raise StudyMismatch(
            f"study {study_name!r} has a budget of {format_duration(current)}; --budget {format_duration(budget_s)} "
            "would shrink it. To stop earlier, use --n-trials or Ctrl-C (the study resumes later); for a smaller "
            "budget, give another --study-name to start a new study"
        )
    return study


def study_budget(study: optuna.Study) -> float | None:
    """The study's recorded compute budget in seconds (None: no budget, only --n-trials stops it)."""
    value = study.user_attrs.get(STUDY_BUDGET)
    return float(value) if value is not None else None


DEFAULT_MAX_SAME_FAILURES = 5
# Failures that say something about the configuration, not about the script: never a reason to stop.
_REGION_FAILURES = {TrialStatus.OOM, TrialStatus.DIVERGED}


class HopelessStudy(RuntimeError):
    """The study stopped because it cannot make progress (the baseline fails, or every trial fails the
    same way); the message quotes the error and the log. The study itself is intact."""


class _FailureStreak:
    """Counts trials in a row that failed with the same signature (class + last error line)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.signature: tuple[str, str] | None = None
        self.count = 0

    def reset(self) -> None:
        """A trial that ran (a pruned one): the streak is broken."""
        self.signature, self.count = None, 0

    def add(self, result: TrialResult) -> bool:
        """Record one trial; True when the streak reached the limit."""
        if result.status is TrialStatus.OK or result.status in _REGION_FAILURES or result.cost_s <= 0:
            self.signature, self.count = None, 0  # cost 0: rejected by a constraint before it ran
            return False
        last_line = ((result.error or "").strip().splitlines() or [""])[-1]
        signature = (result.status.value, last_line)
        self.count = self.count + 1 if signature == self.signature else 1
        self.signature = signature
        return self.limit > 0 and self.count >= self.limit


def _log_excerpt(result: TrialResult, lines: int = 15) -> str:
    tail = str(result.extra.get("log_tail") or "").rstrip().splitlines()[-lines:]
    where = f"\nfull log: {result.log_path}" if result.log_path else ""
    return ("\n" + "\n".join("  | " + line for line in tail) if tail else "") + where


def _hopeless(trial: FrozenTrial | optuna.Trial, result: TrialResult, streak: _FailureStreak) -> str | None:
    """Why the study should stop after this trial, or None."""
    if result.status is TrialStatus.OK or result.status is TrialStatus.LOST:
        streak.add(result)
        return None
    if result.status is TrialStatus.OVERRIDDEN:
        return (
            f"trial {trial.number} did not run the values the study records: {result.error}{_log_excerpt(result)}\n"
            "The study is intact; fix the cause and run the same command again"
        )
    if trial.user_attrs.get(SOURCE_ATTR) == "baseline" and result.status is not TrialStatus.OOM:
        return (
            f"the baseline (trial {trial.number}, the script's own values) failed: {result.status.value}: "
            f"{result.error or 'no error message'}{_log_excerpt(result)}\n"
            "Fix the script (or its centaur.toml) and run the same command again; --keep-going runs on regardless"
        )
    if streak.add(result):
        return (
            f"{streak.count} trials in a row failed the same way ({result.status.value}: {result.error}); "
            f"the last one was trial {trial.number}{_log_excerpt(result)}\n"
            "Fix the cause and run the same command again (the study resumes); --keep-going runs on regardless"
        )
    return None


def run_worker(
    task: Task,
    study: optuna.Study,
    *,
    run_dir: Path,
    budget_s: float | None,
    n_trials: int | None = None,
    penalty: float = 100.0,
    progress: ProgressHook | None = None,
    keep_going: bool = False,
    max_same_failures: int = DEFAULT_MAX_SAME_FAILURES,
    callbacks: Sequence[Callback] = (),
) -> TuneResult:
    """Run trials until the shared budget is spent, `n_trials` were started here, or a stop signal.

    A hopeless study stops with HopelessStudy (unless `keep_going`): when the baseline (the script's
    own defaults) fails with anything but out-of-memory, or when `max_same_failures` trials in a row
    fail with the same error.

    Many workers (processes, machines) may run this on one study at once. Before each trial a worker
    closes trials of dead workers as lost (their configuration is queued for one retry) and checks the
    budget against finished trials, so the budget is overshot by at most the trials already running:
    one per worker.

    The study's pruner (its identity, centaur.study.pruning) is built here, so every worker prunes
    alike; a pruned trial counts its cost, is recorded PRUNED and never counts towards a failure streak.
    `callbacks` (Optuna's signature, `callback(study, frozen_trial)`) are called after every trial this
    worker finished; one that raises is logged and the study goes on.
    """
    run_dir = Path(run_dir)
    plan = _pruning_plan(task, study)
    check_writable(run_dir)
    journal = ResultJournal(run_dir) if _persistent(study) else None
    replayed = journal.replay(study, write_result) if journal is not None else []
    if replayed:
        log.warning("wrote %d result(s) kept locally by an earlier worker: trials %s", len(replayed), replayed)
    stop = StopFlag()
    started_here = 0
    summarize_here = RunningSummary()
    summary = with_retries(lambda: summarize_here(study), "reading the study")
    if progress:
        progress.on_start(summary)
    reason = "budget spent"
    last_lost_check = -math.inf
    same_failures = _FailureStreak(max_same_failures)
    with stop.installed():
        while True:
            if time.monotonic() - last_lost_check >= HEARTBEAT_S:  # no need to look more often than beats come
                with_retries(lambda: close_lost_trials(study), "closing trials of dead workers")
                last_lost_check = time.monotonic()
            summary = with_retries(lambda: summarize_here(study), "reading the study")
            if budget_s is not None and summary.used_s >= budget_s:
                reason = "budget spent"
                break
            if n_trials is not None and started_here >= n_trials:
                reason = f"{n_trials} trials run"
                break
            if stop.requested:
                reason = "stopped by signal"
                break
            ran = _run_one(task, study, run_dir=run_dir, penalty=penalty, progress=progress, journal=journal,
                           plan=plan, reread=bool(callbacks))
            if ran is None:
                continue  # the trial went to another worker
            frozen, result = ran
            started_here += 1
            if progress:
                summary = with_retries(lambda: summarize_here(study), "reading the study")
                progress.on_trial_end(frozen, summary)
            notify(callbacks, study, frozen)  # trackers: one that fails is logged, never stops the study
            if result.extra.get(STATUS_ATTR) == PRUNED_STATUS:
                same_failures.reset()  # it ran: whatever failed before, this configuration did not
            elif not keep_going or result.status is TrialStatus.OVERRIDDEN:  # never run on with values that did not run
                hopeless = _hopeless(frozen, result, same_failures)
                if hopeless:
                    if progress:
                        progress.on_stop("the study cannot make progress", summary)
                    raise HopelessStudy(hopeless)
    if progress:
        progress.on_stop(reason, summary)
    return TuneResult(study, summary, reason)


def _pruning_plan(task: Task, study: optuna.Study) -> tuple[PrunerSettings, ProgressPattern | None] | None:
    """The study's pruner and the task's progress regex when the study prunes (and then the study's
    pruner is set); None when it does not. With a fidelity the pattern is None: short runs report."""
    settings = study_pruner(study)
    if not settings.active:
        return None
    study.pruner = settings.build()
    if settings.fidelity is not None:
        fidelity_full(task, settings.fidelity)
        return settings, None
    text = progress_text(task)
    if text is None:
        raise PrunerError(
            f"study {study.study_name!r} prunes ({settings.describe()}) but the task declares no "
            "[task] progress regex in its centaur.toml (docs/pruning.md)"
        )
    return settings, ProgressPattern.compile(text)


def _propose(space: SearchSpace, trial: optuna.Trial) -> dict[str, Any]:
    suggest_all(trial, space.distributions())  # one write for all parameters on an RDB storage
    return space.suggest(trial)


def _start_trial(task: Task, study: optuna.Study) -> tuple[optuna.Trial, dict[str, Any]] | None:
    t0 = time.perf_counter()
    trial = with_retries(study.ask, "asking for a trial")
    try:
        # Samplers read and write the storage while proposing: a dropped connection is retried
        # (a repeated suggest returns the parameters already set).
        config = with_retries(lambda: _propose(task.space, trial), f"proposing trial {trial.number}")
    except BaseException as e:
        # The method could not propose (LLM endpoint gone and no fallback, a sampler bug, storage gone):
        # close the trial at once instead of leaving it RUNNING for other workers to time out.
        with contextlib.suppress(Exception):
            trial.set_user_attr("error", f"proposal failed: {type(e).__name__}: {e}"[:500])
            study.tell(trial, state=TrialState.FAIL)
        raise
    sampler_s = time.perf_counter() - t0

    def mark() -> None:
        attrs = {CONFIG_ATTR: config, OWNER_ATTR: owner_tag(), STARTED_ATTR: time.time(), SAMPLER_ATTR: sampler_s,
                 **script_units(task.space, config)}  # fmt: skip
        # The source is already set on a queued trial (baseline, retry: in the Trial's cached attributes)
        # or by a sampler that records its own (LLM methods write it straight to the storage).
        if SOURCE_ATTR not in trial.user_attrs and not getattr(study.sampler, "records_source", False):
            attrs[SOURCE_ATTR] = getattr(study.sampler, "name", type(study.sampler).__name__)
        set_user_attrs(trial, attrs)

    with_retries(mark, f"starting trial {trial.number}")
    return trial, config


_OUR_ATTRS = frozenset(v for k, v in vars(schema).items() if k.endswith("_ATTR") and isinstance(v, str))


def script_units(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    """The parameters whose Optuna form differs from the script's (a power of two is its exponent to the
    optimizers: `log2(HEAD_DIM)` = 7), under the script's own names with the values that ran (`HEAD_DIM`
    = 128), as user attributes: what optuna-dashboard and `study.trials_dataframe()` show beside the
    parameters. A name that is one of our own attributes is left to `config`."""
    return {p.name: config[p.name] for p in space
            if p.key != p.name and p.name in config and p.name not in _OUR_ATTRS}  # fmt: skip


def _run_one(
    task: Task,
    study: optuna.Study,
    *,
    run_dir: Path,
    penalty: float,
    progress: ProgressHook | None,
    journal: ResultJournal | None = None,
    plan: tuple[PrunerSettings, ProgressPattern | None] | None = None,
    reread: bool = False,
) -> tuple[FrozenTrial | optuna.Trial, TrialResult] | None:
    """Run one trial; None when it went to another worker. The stored trial is re-read only for progress
    (or `reread`: for the callbacks).
    With a progress `pattern` (a pruned study), its intermediate values are reported while it runs and
    the pruner may stop it; the returned result of a pruned trial has extra status "pruned"."""
    started_trial = _start_trial(task, study)
    if started_trial is None:
        return None
    trial, config = started_trial
    if progress:
        progress.on_trial_start(trial.number, config)
    started = time.monotonic()
    disk_error: OSError | None = None
    pruning = TrialPruning(study, trial, plan[1], plan[0]) if plan is not None else None
    try:
        with (
            Heartbeat(study, op.trial_id(trial)) if _persistent(study) else contextlib.nullcontext(),
            pruning if pruning is not None else contextlib.nullcontext(),
            watching(pruning.watch if pruning is not None else None),
        ):
            result = task.evaluate(config, trial_number=trial.number, run_dir=run_dir)
    except KeyboardInterrupt:
        # Aborted by a second stop signal: the trial is lost (its cost counted) and queued for a retry.
        elapsed = time.monotonic() - started
        frozen = with_retries(lambda: op.read_trial(study, trial), "reading a trial")
        with_retries(lambda: close_trial_as_lost(study, frozen, elapsed, "interrupted"), "closing a lost trial")
        raise
    except OSError as e:
        if e.errno not in _DISK_ERRNOS:
            raise
        disk_error = e
        result = TrialResult(TrialStatus.CRASH, error=f"{type(e).__name__}: {e}")
    except Exception as e:  # a task bug must not lose the study: record it as a crash and go on
        log.exception("trial %d: the task raised", trial.number)
        elapsed = time.monotonic() - started
        result = TrialResult(TrialStatus.CRASH, cost_s=elapsed, wall_s=elapsed, error=f"{type(e).__name__}: {e}")
    if pruning is not None and pruning.pruned:
        record_result(study, trial, result, penalty, journal=journal, pruned=pruning.attrs())
        result.extra[STATUS_ATTR] = PRUNED_STATUS
        if progress or reread:
            return with_retries(lambda: op.read_trial(study, trial), "reading a trial"), result
        return trial, result
    if result.status is not TrialStatus.OK and _persistent(study):
        # A failure may be the disk's fault, not the configuration's (a full disk makes the script crash
        # when it writes its log): then the trial is lost, its configuration retried, and this worker stops.
        try:
            check_writable(run_dir)
        except RunDirError as e:
            elapsed = time.monotonic() - started
            frozen = with_retries(lambda: op.read_trial(study, trial), "reading a trial")
            why = f"run directory not writable: {disk_error or result.error}"
            with_retries(lambda: close_trial_as_lost(study, frozen, elapsed, why), "closing a lost trial")
            raise e from None
    record_result(study, trial, result, penalty, journal=journal)
    if progress or reread:  # the finished trial, as stored, for the progress display and the callbacks
        return with_retries(lambda: op.read_trial(study, trial), "reading a trial"), result
    return trial, result


def record_result(
    study: optuna.Study,
    trial: optuna.Trial,
    result: TrialResult,
    penalty: float,
    *,
    journal: ResultJournal | None = None,
    pruned: dict[str, Any] | None = None,
) -> None:
    """Write a finished trial: COMPLETE with its value; FAIL for a failure, with the value its method is
    told (`penalty`) and the failed constraint; FAIL for a lost one; PRUNED (`pruned`: its step and value
    attributes) for one the pruner stopped, with status "pruned", what it ran as its cost and no failed
    constraint. Kept in `journal` until the storage confirmed it, and retried."""
    ok = result.status is TrialStatus.OK and result.value is not None and math.isfinite(result.value)
    status = result.status.value if ok or result.status is not TrialStatus.OK else TrialStatus.CRASH.value
    attrs: dict[str, Any] = {
        STATUS_ATTR: PRUNED_STATUS if pruned is not None else status,
        # A pruned run was killed: its cost is its wall time (the task's own); a fidelity's pruned trial
        # counts what its complete short runs cost.
        COST_ATTR: float((result.cost_s or result.wall_s) if pruned is not None else result.cost_s),
        WALL_ATTR: float(result.wall_s),
        "metrics": {k: v for k, v in result.metrics.items() if math.isfinite(v)},
    }
    if result.error:
        attrs["error"] = result.error[:500]
    if result.log_path:
        attrs["log"] = result.log_path
    for key, value in result.extra.items():
        if (
            key != "log_tail"
            and isinstance(value, (int, float, str, bool))
            and not (isinstance(value, float) and not math.isfinite(value))
        ):
            attrs[key] = value
    if pruned is not None:
        attrs.update(pruned)
        attrs[STATUS_ATTR] = PRUNED_STATUS
        attrs.pop("error", None)  # the kill's exit code is no error of the configuration
    lost = result.status is TrialStatus.LOST and pruned is None
    if pruned is not None:
        state, value, constraint = "PRUNED", None, 0.0  # it ran fine: not infeasible to constrained samplers
    elif lost:
        state, value, constraint = "FAIL", None, None
    elif ok:
        state, value, constraint = "COMPLETE", float(result.value), 0.0
    else:  # FAIL for people and plots; methods are told `penalty` (methods/failure_view.py)
        state, value, constraint = "FAIL", None, 1.0
        attrs[TOLD_ATTR] = float(penalty)
    pending = PendingResult(
        study_name=study.study_name,
        trial_id=op.trial_id(trial),
        number=trial.number,
        state=state,
        value=value,
        constraint=constraint,
        user_attrs=attrs,
    )
    disk_error: OSError | None = None
    if journal is not None:
        try:
            journal.save(pending)
        except OSError as e:  # the run directory filled up or turned read-only: the storage may still take it
            if e.errno not in _DISK_ERRNOS:
                raise
            disk_error, journal = e, None
    write_result(study, pending)
    if journal is not None:
        journal.done(pending)
    if disk_error is not None:
        raise RunDirError(
            f"run directory {disk_error.filename or ''} is not writable ({disk_error.strerror}); trial "
            f"{trial.number}'s result was written to the study, but this worker stops: free space or fix the "
            "permissions, then run the same command again to resume"
        )


__all__ = [
    "HopelessStudy",
    "ProgressHook",
    "RunDirError",
    "StorageUnavailable",
    "StudyMismatch",
    "TuneResult",
    "check_writable",
    "open_study",
    "record_result",
    "run_worker",
]
