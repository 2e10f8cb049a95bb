"""The tuning loop of one worker: ask the sampler, run the trial, record it, until the budget is spent."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import CONFIG_ATTR, SOURCE_ATTR, STATUS_ATTR
from centaur.study.lost import HEARTBEAT_S, close_lost_trials, owner_tag
from centaur.study.records import (
    ALIVE_ATTR,
    COST_ATTR,
    FEASIBLE_CONSTRAINT,
    OWNER_ATTR,
    SAMPLER_ATTR,
    STARTED_ATTR,
    STUDY_BUDGET,
    STUDY_METHOD,
    STUDY_PENALTY,
    STUDY_SEED,
    STUDY_TASK,
    WALL_ATTR,
    StudySummary,
    summarize,
)
from centaur.study.storage import open_storage
from centaur.tasks.base import Task, TrialResult, TrialStatus

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyMismatch(ValueError):
    """An existing study was created with other settings than this run asks for."""


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


class _StopFlag:
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

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class _Heartbeat:
    """Writes `alive_at` on the running trial so others can tell a dead worker and its real cost."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(study, trial_id), daemon=True)

    def _run(self, study: optuna.Study, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat only makes a lost trial's cost coarser
                study._storage.set_trial_user_attr(trial_id, ALIVE_ATTR, time.time())

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def open_study(
    task: Task,
    *,
    method: str,
    seed: int,
    budget_s: float | None,
    storage: str,
    study_name: str,
    penalty: float,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create or load the study; on creation, enqueue the script's defaults as trial 0 (the baseline)."""
    study = optuna.create_study(
        storage=open_storage(storage), study_name=study_name, sampler=sampler, direction="minimize", load_if_exists=True
    )
    attrs = study.user_attrs
    if STUDY_METHOD in attrs:
        for key, want in ((STUDY_METHOD, method), (STUDY_SEED, seed)):
            if attrs.get(key) != want:
                raise StudyMismatch(
                    f"study {study_name!r} was created with {key}={attrs.get(key)!r}, not {want!r}; "
                    "use another --study-name to start a new study"
                )
    else:
        study.set_user_attr(STUDY_METHOD, method)
        study.set_user_attr(STUDY_SEED, seed)
        study.set_user_attr(STUDY_TASK, task.name)
        study.set_user_attr(STUDY_PENALTY, penalty)
        study.set_user_attr("space", task.space.describe())
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(task.space.encode(task.space.defaults()), user_attrs={SOURCE_ATTR: "baseline"})
    if budget_s is not None and attrs.get(STUDY_BUDGET) != budget_s:
        study.set_user_attr(STUDY_BUDGET, budget_s)  # running again with a larger budget extends the study
    return study


def run_worker(
    task: Task,
    study: optuna.Study,
    *,
    run_dir: Path,
    budget_s: float | None,
    n_trials: int | None = None,
    penalty: float = 100.0,
    progress: ProgressHook | None = None,
) -> TuneResult:
    """Run trials until the shared budget is spent, `n_trials` were started here, or a stop signal."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lost = close_lost_trials(study)
    if lost:
        log.warning("closed %d trial(s) of dead workers as lost: %s", len(lost), lost)
    stop = _StopFlag()
    started_here = 0
    summary = summarize(study)
    if progress:
        progress.on_start(summary)
    reason = "budget spent"
    with stop.installed():
        while True:
            if budget_s is not None and summary.used_s >= budget_s:
                reason = "budget spent"
                break
            if n_trials is not None and started_here >= n_trials:
                reason = f"{n_trials} trials run"
                break
            if stop.requested:
                reason = "stopped by signal"
                break
            _run_one(task, study, run_dir=run_dir, penalty=penalty, progress=progress, stop=stop)
            started_here += 1
            summary = summarize(study)
            if progress:
                progress.on_trial_end(study.get_trials(deepcopy=False)[-1], summary)
    if progress:
        progress.on_stop(reason, summary)
    return TuneResult(study, summary, reason)


def _run_one(
    task: Task, study: optuna.Study, *, run_dir: Path, penalty: float, progress: ProgressHook | None, stop: _StopFlag
) -> None:
    t0 = time.perf_counter()
    trial = study.ask()
    config = task.space.suggest(trial)
    sampler_s = time.perf_counter() - t0
    trial.set_user_attr(CONFIG_ATTR, config)
    trial.set_user_attr(OWNER_ATTR, owner_tag())
    trial.set_user_attr(STARTED_ATTR, time.time())
    trial.set_user_attr(SAMPLER_ATTR, sampler_s)
    # Samplers write their own attributes straight to storage (the Trial object's cache misses them).
    if SOURCE_ATTR not in study._storage.get_trial(trial._trial_id).user_attrs:
        trial.set_user_attr(SOURCE_ATTR, getattr(study.sampler, "name", type(study.sampler).__name__))
    if progress:
        progress.on_trial_start(trial.number, config)
    started = time.monotonic()
    try:
        with _Heartbeat(study, trial._trial_id):
            result = task.evaluate(config, trial_number=trial.number, run_dir=run_dir)
    except KeyboardInterrupt:
        elapsed = time.monotonic() - started
        result = TrialResult(TrialStatus.LOST, cost_s=elapsed, wall_s=elapsed, error="interrupted")
        record_result(study, trial, result, penalty)
        raise
    except Exception as e:  # a task bug must not lose the study: record it as a crash and go on
        log.exception("trial %d: the task raised", trial.number)
        elapsed = time.monotonic() - started
        result = TrialResult(TrialStatus.CRASH, cost_s=elapsed, wall_s=elapsed, error=f"{type(e).__name__}: {e}")
    record_result(study, trial, result, penalty)


def record_result(study: optuna.Study, trial: optuna.Trial, result: TrialResult, penalty: float) -> None:
    ok = result.status is TrialStatus.OK and result.value is not None and math.isfinite(result.value)
    attrs: dict[str, Any] = {
        STATUS_ATTR: result.status.value if ok or result.status is not TrialStatus.OK else TrialStatus.CRASH.value,
        COST_ATTR: float(result.cost_s),
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
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if result.status is TrialStatus.LOST:
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_constraint(FEASIBLE_CONSTRAINT, 0.0 if ok else 1.0)
    study.tell(trial, result.value if ok else penalty)
