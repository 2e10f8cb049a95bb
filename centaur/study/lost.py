"""Trials whose worker died: detect them, close them as failed (class `lost`) counting what they
really spent, and enqueue their configuration once more so a live worker retries it."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from centaur.study import optuna_private as op
from centaur.study.optuna_private import set_trial_attrs
from centaur.study.schema import (
    ALIVE_ATTR,
    CONFIG_ATTR,
    COST_ATTR,
    OWNER_ATTR,
    RETRIES_ATTR,
    RETRY_OF_ATTR,
    SOURCE_ATTR,
    STARTED_ATTR,
    STATUS_ATTR,
    WALL_ATTR,
)

log = logging.getLogger(__name__)

# A worker writes `alive_at` this often while its trial runs; a lost trial's cost is known to this precision.
HEARTBEAT_S = float(os.environ.get("CENTAUR_HEARTBEAT_S", "5"))
# A worker on another host silent this long is presumed dead (same host: checked by pid at once).
STALE_AFTER_S = float(os.environ.get("CENTAUR_STALE_AFTER_S", "120"))
MAX_BASELINE_RETRIES = 5


_OWNER: dict[int, dict[str, object]] = {}


def owner_tag() -> dict[str, object]:
    """Who runs a trial: host, pid and the process's start time (a reused pid is another process)."""
    pid = os.getpid()
    if pid not in _OWNER:  # keyed by pid: a forked child must not inherit its parent's tag
        _OWNER[pid] = {"host": socket.gethostname(), "pid": pid, "created": psutil.Process().create_time()}
    return dict(_OWNER[pid])


def _owner_dead(t: FrozenTrial, now: float) -> bool:
    owner = t.user_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict):
        # No owner recorded: the worker died between creating the trial and its first write.
        return now - (t.datetime_start.timestamp() if t.datetime_start else now) > STALE_AFTER_S
    if owner.get("host") == socket.gethostname():
        try:
            proc = psutil.Process(int(owner["pid"]))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            return abs(proc.create_time() - float(owner["created"])) > 1.0  # pid reused by another process
        except (psutil.NoSuchProcess, KeyError, ValueError):
            return True
    alive = float(t.user_attrs.get(ALIVE_ATTR, t.user_attrs.get(STARTED_ATTR, now)))
    return now - alive > STALE_AFTER_S


def close_trial_as_lost(study: optuna.Study, t: FrozenTrial, spent: float, error: str | None = None) -> bool:
    """Close a RUNNING trial as FAIL/lost with `spent` seconds of cost and enqueue its configuration for
    one retry (not when it was itself a retry). False when another worker closed it first."""
    storage = op.storage_of(study)
    try:
        attrs: dict[str, Any] = {STATUS_ATTR: "lost", COST_ATTR: spent, WALL_ATTR: spent}
        if error:
            attrs["error"] = error[:500]
        set_trial_attrs(storage, op.trial_id(t), user_attrs=attrs)
        # The state change is the claim: exactly one worker succeeds, and only it enqueues the retry.
        if not storage.set_trial_state_values(op.trial_id(t), TrialState.FAIL):
            return False
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError, optuna.exceptions.StorageInternalError):
        return False  # finished meanwhile, or SQLite's lock lost to the worker that closes it
    if CONFIG_ATTR in t.user_attrs and _retry_allowed(t) and len(t.params) == len(t.distributions):
        attrs = {
            RETRY_OF_ATTR: t.number,
            SOURCE_ATTR: t.user_attrs.get(SOURCE_ATTR, "retry"),
            RETRIES_ATTR: int(t.user_attrs.get(RETRIES_ATTR, 0)) + 1,
        }
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
    return True


def _retry_allowed(t: FrozenTrial) -> bool:
    """One retry per configuration; the baseline up to MAX_BASELINE_RETRIES, since a study without it has
    no reference point (and its stop rule never fires)."""
    if t.user_attrs.get(SOURCE_ATTR) == "baseline":
        return int(t.user_attrs.get(RETRIES_ATTR, 0)) < MAX_BASELINE_RETRIES
    return RETRY_OF_ATTR not in t.user_attrs


def close_lost_trials(study: optuna.Study) -> list[int]:
    """Close the RUNNING trials of dead workers as lost (see close_trial_as_lost); returns their numbers."""
    now = time.time()
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_dead(t, now):
            continue
        started = float(t.user_attrs.get(STARTED_ATTR, now))
        spent = max(0.0, float(t.user_attrs.get(ALIVE_ATTR, started)) - started)
        if close_trial_as_lost(study, t, spent):
            lost.append(t.number)
    if lost:
        log.warning("closed %d trial(s) of dead workers as lost and queued their retry: %s", len(lost), lost)
    return lost
