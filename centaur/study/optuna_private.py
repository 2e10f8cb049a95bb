"""The one module that reaches past Optuna's public API.

Everything else goes through these functions, so an Optuna upgrade touches this file only, and
tests/test_attr_batch.py and tests/test_param_batch.py check its table writes against Optuna's own
per-key path on SQLite, PostgreSQL and journal storages.

- Handles: a study's storage and id, a trial's id, the raw suggest that works for every distribution.
- Batched writes: Optuna's `Trial.suggest_*` writes each parameter, and `set_trial_user_attr` each key, in a
  transaction of its own (read the trial, check it is updatable, write, commit). On PostgreSQL those
  commits were most of a trial's ~105 statements, and with many workers on few cores the database's CPU
  limits throughput (docs/deployment.md). Here a trial's parameters are sampled first, in Optuna's own
  order and with its own checks, then written in one transaction; its attributes go in one upsert.
  Storages other than RDB (journal, in-memory) keep Optuna's per-key path.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, _get_single_value, check_distribution_compatibility
from optuna.pruners import _filter_study
from optuna.samplers._lazy_random_state import LazyRandomState  # noqa: F401  (re-exported for seeding)
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import FrozenTrial

AnyTrial = optuna.Trial | FrozenTrial


# -- handles ---------------------------------------------------------------------------------------------
def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: AnyTrial) -> int:
    return trial._trial_id


def is_in_memory(study: optuna.Study) -> bool:
    """An in-memory study (simulated benchmarks): no other process can see it."""
    return isinstance(study._storage, InMemoryStorage)


def read_trial(study: optuna.Study, trial: AnyTrial) -> FrozenTrial:
    """The trial as stored now (a Trial's own copy may lag behind other writers)."""
    return study._storage.get_trial(trial._trial_id)


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def set_trial_system_attr(study: optuna.Study, trial: AnyTrial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def set_trial_user_attr(study: optuna.Study, trial: AnyTrial, key: str, value: Any) -> None:
    """A user attribute on a trial that is being sampled (samplers get FrozenTrials, which cannot write)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def suggest_raw(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """`Trial.suggest_*` for any distribution object: one call path for every parameter type."""
    return trial._suggest(name, distribution)


def constraint_key(name: str) -> str:
    """The system attribute under which Optuna's constrained samplers read a trial's constraint values."""
    return f"{_CONSTRAINTS_KEY}:{name}"


def constraint_list_key() -> str:
    """Optuna's older constraint record, one list of values per trial: what optuna-dashboard (0.21) reads
    to mark a trial infeasible. Optuna reads both forms."""
    return _CONSTRAINTS_KEY


# -- one transaction for a trial's parameters ------------------------------------------------------------
def suggest_all(trial: optuna.Trial, distributions: dict[str, BaseDistribution]) -> int:
    """Sample every parameter of `distributions` the way `Trial.suggest_*` does (fixed, single-valued,
    relative, else the sampler's `sample_independent`, in this order of names) and write them in one
    transaction. Returns how many were written (0: nothing done, use Optuna's per-parameter path); the
    caller's suggests then read the values from the trial's cache."""
    frozen = trial._cached_frozen_trial
    if any(name in frozen.distributions for name in distributions):
        return 0  # a retried proposal: Optuna's per-parameter path completes it
    storage = trial.storage
    backend = rdb_backend(storage)
    if backend is None:
        return 0
    decided: dict[str, tuple[Any, float, BaseDistribution]] = {}
    for name, dist in distributions.items():
        if trial._is_fixed_param(name, dist):
            value = trial._fixed_params[name]
        elif dist.single():
            value = _get_single_value(dist)
        elif trial._is_relative_param(name, dist):
            value = trial.relative_params[name]
        else:
            # What `_suggest` passes: the latest trial, with the parameters sampled so far.
            latest = trial._get_latest_trial()
            latest.params = {**frozen.params, **{n: v for n, (v, _, _) in decided.items()}}
            latest.distributions = {**frozen.distributions, **{n: d for n, (_, _, d) in decided.items()}}
            value = trial.study.sampler.sample_independent(_filter_study(trial.study, latest), latest, name, dist)
        decided[name] = (value, dist.to_internal_repr(value), dist)  # raises on NaN, as suggest does
    if not decided:
        return 0
    _write(storage, backend, trial._trial_id, decided)
    for name, (value, _, dist) in decided.items():
        frozen.distributions[name] = dist
        frozen.params[name] = value
    return len(decided)


def rdb_backend(storage: Any) -> RDBStorage | None:
    """The RDB storage under Optuna's cache wrapper, or None for other storages (journal, in-memory)."""
    backend = storage._backend if isinstance(storage, _CachedStorage) else storage
    return backend if isinstance(backend, RDBStorage) else None


def _write(storage: Any, backend: RDBStorage, trial_id: int,
           decided: dict[str, tuple[Any, float, BaseDistribution]]) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    study_info = None
    if isinstance(storage, _CachedStorage):  # the distributions the cache already knows save a query each
        with storage._lock:
            study_id, _ = storage._trial_id_to_study_id_and_number[trial_id]
            study_info = storage._studies[study_id]
    with _create_scoped_session(backend.scoped_session, True) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        backend.check_trial_is_updatable(trial_id, trial.state)
        for name, (_, internal, dist) in decided.items():
            known = study_info.param_distribution.get(name) if study_info is not None else None
            if known is None:
                record = (
                    session.query(models.TrialParamModel)
                    .join(models.TrialModel)
                    .filter(models.TrialModel.study_id == trial.study_id)
                    .filter(models.TrialParamModel.param_name == name)
                    .first()
                )
                if record is not None:
                    known = optuna.distributions.json_to_distribution(record.distribution_json)
            if known is not None:
                check_distribution_compatibility(known, dist)
            session.add(models.TrialParamModel(
                trial_id=trial_id, param_name=name, param_value=internal,
                distribution_json=optuna.distributions.distribution_to_json(dist),
            ))
    if study_info is not None:
        with storage._lock:
            for name, (_, _, dist) in decided.items():
                study_info.param_distribution.setdefault(name, dist)


# -- one transaction for a trial's attributes ------------------------------------------------------------
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


def distribution_contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` (an external value) is a value of `distribution`, on its step grid: the check Optuna
    applies to a relative sample before using it (else it samples the parameter independently)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
