"""Finished results survive a lost storage connection: each is saved to a local file before it is
written to the study, the write is retried, and results left behind (worker killed, storage down for
longer than the retry window) are written by the next worker that starts in the same run directory.

One file per trial under `RUN_DIR/unwritten/`; a worker claims a file by renaming it (atomic), so two
workers never write the same result twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from centaur.study import optuna_private as op
from centaur.study.optuna_private import set_trial_attrs
from centaur.study.records import FEASIBLE_CONSTRAINT

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_RETRY_S = 600.0  # how long a worker keeps retrying a storage write before giving up
RETRY_ENV = "CENTAUR_STORAGE_RETRY_S"


class StorageUnavailable(RuntimeError):
    """The storage stayed unreachable for the whole retry window; finished results are kept locally."""


def is_connection_error(e: BaseException) -> bool:
    """A transient storage failure (connection refused or dropped, database restarting, locked)."""
    if isinstance(e, optuna.exceptions.StorageInternalError):
        return True
    module = type(e).__module__
    if module.startswith("sqlalchemy"):
        import sqlalchemy.exc

        return isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or bool(
            getattr(e, "connection_invalidated", False)
        )
    return module.startswith(("psycopg2", "psycopg")) or isinstance(e, ConnectionError)


def _is_sqlite_conflict(e: BaseException | None) -> bool:
    """SQLite's answer when another process committed between this transaction's read and its write."""
    while e is not None:
        if type(e).__module__ == "sqlite3" and "locked" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_window_s() -> float:
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S))


def with_retries(fn: Callable[[], T], what: str, window_s: float | None = None) -> T:
    """Call `fn`, retrying transient storage failures with exponential backoff for `window_s`."""
    window = retry_window_s() if window_s is None else window_s

    def before_sleep(state: Any) -> None:
        e = state.outcome.exception()
        if _is_sqlite_conflict(e):  # routine with several SQLite workers: another one committed first
            log.debug("SQLite write conflict while %s; retrying", what)
        else:
            log.warning("storage unavailable while %s (%s); retrying", what, e)

    try:
        for attempt in Retrying(
            retry=retry_if_exception(is_connection_error),
            wait=wait_exponential(multiplier=0.25, max=5.0),
            stop=stop_after_delay(window),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return fn()
    except Exception as e:
        if is_connection_error(e):
            raise StorageUnavailable(
                f"storage unreachable for {window:.0f} s while {what}: {str(e).splitlines()[0] if str(e) else e!r}"
            ) from None
        raise
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class PendingResult:
    """Everything needed to write one finished trial: its attributes, state, value and constraint."""

    study_name: str
    trial_id: int
    number: int
    state: str  # "COMPLETE", "PRUNED" (stopped by the pruner) or "FAIL" (lost)
    value: float | None
    constraint: float | None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    saved_at: float = field(default_factory=time.time)


class ResultJournal:
    """The local files of results not yet confirmed written to the study."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "unwritten"

    def _path(self, r: PendingResult) -> Path:
        return self.dir / f"{r.study_name}.{r.trial_id}.json"

    def save(self, r: PendingResult) -> None:
        """Best effort: a full or read-only disk must not stop the direct write that follows."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self._path(r).with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(r)), encoding="utf-8")
            os.replace(tmp, self._path(r))
        except OSError as e:
            log.warning("cannot keep trial %d's result locally (%s); writing it directly", r.number, e)

    def done(self, r: PendingResult) -> None:
        with contextlib.suppress(OSError):
            self._path(r).unlink()

    def replay(self, study: optuna.Study, write: Callable[[optuna.Study, PendingResult], None]) -> list[int]:
        """Write the results other (dead) workers or an earlier run of this one left; their numbers."""
        if not self.dir.is_dir():
            return []
        written = []
        for path in sorted(self.dir.glob(f"{study.study_name}.*.json")):
            claimed = path.with_suffix(f".claimed{os.getpid()}")
            try:
                os.rename(path, claimed)  # only one worker wins the claim
                r = PendingResult(**json.loads(claimed.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue
            try:
                write(study, r)
            except StorageUnavailable:
                os.rename(claimed, path)  # keep it for the next attempt
                raise
            claimed.unlink()
            written.append(r.number)
        return written


def write_result(study: optuna.Study, r: PendingResult) -> None:
    """Write a finished trial idempotently: a retry after a write that did reach the database, or a
    replay of a result that is already in, changes nothing."""
    storage = op.storage_of(study)

    def attempt() -> None:
        # No read first: the write itself refuses a finished trial, and writing again what a dropped
        # connection already wrote is harmless (upserts; the tell skips a finished trial).
        # The named constraint for Optuna's samplers, and the same value in the list form optuna-dashboard
        # reads, so a failed trial shows there as infeasible (samplers never see the list: methods/failure_view.py).
        constraint = None if r.constraint is None else float(r.constraint)
        attrs = None if constraint is None else {op.constraint_key(FEASIBLE_CONSTRAINT): constraint,
                                                 op.constraint_list_key(): [constraint]}  # fmt: skip
        try:
            set_trial_attrs(storage, r.trial_id, user_attrs=r.user_attrs, system_attrs=attrs)
        except optuna.exceptions.UpdateFinishedTrialError:
            t = storage.get_trial(r.trial_id)
            if t.state.name != r.state or t.user_attrs.get("status") != r.user_attrs.get("status"):
                log.warning(
                    "trial %d was closed as %s by another worker before its result could be written; "
                    "the result stays in the trial log only",
                    r.number,
                    t.user_attrs.get("status", t.state.name),
                )
            return
        # skip_if_finished: finished meanwhile by another worker that also held it (see the log above).
        if r.state == "FAIL":
            study.tell(r.number, state=TrialState.FAIL, skip_if_finished=True)
        elif r.state == "PRUNED":  # Optuna keeps the last intermediate value as the trial's value
            study.tell(r.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(r.number, r.value, skip_if_finished=True)

    with_retries(attempt, f"writing the result of trial {r.number}")
