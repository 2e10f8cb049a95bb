"""Trials whose worker died: detect them and close them as failed, counting what they really spent."""

from __future__ import annotations

import os
import socket
import time

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import STATUS_ATTR
from centaur.study.records import ALIVE_ATTR, COST_ATTR, OWNER_ATTR, STARTED_ATTR, WALL_ATTR

HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0  # a remote worker silent this long is presumed dead


def owner_tag() -> dict[str, object]:
    proc = psutil.Process()
    return {"host": socket.gethostname(), "pid": os.getpid(), "created": proc.create_time()}


def _owner_dead(t: FrozenTrial, now: float) -> bool:
    owner = t.user_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict):
        # No owner recorded: the worker died between creating the trial and its first write.
        return now - (t.datetime_start.timestamp() if t.datetime_start else now) > STALE_AFTER_S
    if owner.get("host") == socket.gethostname():
        try:
            proc = psutil.Process(int(owner["pid"]))
            return abs(proc.create_time() - float(owner["created"])) > 1.0  # pid reused by another process
        except (psutil.NoSuchProcess, KeyError, ValueError):
            return True
    alive = float(t.user_attrs.get(ALIVE_ATTR, t.user_attrs.get(STARTED_ATTR, now)))
    return now - alive > STALE_AFTER_S


def close_lost_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL with status 'lost'; returns their numbers."""
    now = time.time()
    lost = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_dead(t, now):
            continue
        started = float(t.user_attrs.get(STARTED_ATTR, now))
        spent = max(0.0, float(t.user_attrs.get(ALIVE_ATTR, started)) - started)
        try:
            storage.set_trial_user_attr(t._trial_id, STATUS_ATTR, "lost")
            storage.set_trial_user_attr(t._trial_id, COST_ATTR, spent)
            storage.set_trial_user_attr(t._trial_id, WALL_ATTR, spent)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker closed it first
        lost.append(t.number)
    return lost
