"""A trial's attributes written to an RDB storage in one transaction instead of one per key.

Optuna's `set_trial_user_attr` opens a transaction per key: it reads the trial, checks that it is still
updatable, upserts the key and commits. A worker sets about ten attributes per trial (who runs it, when
it started, its status, cost, metrics), so on PostgreSQL those commits were a fifth of a trial's
statements, and with many workers on few cores the database's CPU is what limits throughput
(docs/deployment.md). Here the trial is read and checked once and all keys go in one upsert statement.
Other storages (journal, in-memory) keep Optuna's per-key path.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import optuna
from optuna.storages import BaseStorage

from centaur.study.param_batch import rdb_backend


def set_trial_attrs(
    storage: BaseStorage,
    trial_id: int,
    user_attrs: dict[str, Any] | None = None,
    system_attrs: dict[str, Any] | None = None,
) -> None:
    """Set user and system attributes of a running trial together: one transaction on an RDB storage.
    Raises `optuna.exceptions.UpdateFinishedTrialError` if the trial is finished, as Optuna does."""
    user_attrs, system_attrs = user_attrs or {}, system_attrs or {}
    backend = rdb_backend(storage)
    upserts = {"postgresql": True, "sqlite": sqlite3.sqlite_version_info >= (3, 24, 0)}  # ON CONFLICT DO UPDATE
    if backend is None or not upserts.get(backend.engine.name, False):
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    if not user_attrs and not system_attrs:
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    if backend.engine.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert

    with _create_scoped_session(backend.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        backend.check_trial_is_updatable(trial_id, trial.state)
        for model, attrs in ((models.TrialUserAttributeModel, user_attrs), (models.TrialSystemAttributeModel,
                                                                            system_attrs)):  # fmt: skip
            if not attrs:
                continue
            stmt = insert(model).values(
                [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
            )
            session.execute(stmt.on_conflict_do_update(
                index_elements=[model.trial_id, model.key], set_={"value_json": stmt.excluded.value_json}
            ))  # fmt: skip


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """`Trial.set_user_attr` for several keys at once, keeping the Trial's cached copy in step."""
    set_trial_attrs(trial.storage, trial._trial_id, user_attrs=attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)
