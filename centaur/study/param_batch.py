"""A trial's parameters written to an RDB storage in one transaction instead of one per parameter.

Optuna's `Trial.suggest_*` writes each parameter in its own transaction: on PostgreSQL, 14 parameters
are about 56 of the ~105 statements a trial costs, and with 16 workers the database server's CPU is what
limits throughput (docs/deployment.md). Our spaces have no conditional parameters, so a trial's
values can all be sampled first, in Optuna's own order and with Optuna's own checks (`Trial._is_fixed_param`,
`_is_relative_param`, `sample_independent` with the values so far), and then written together. Storages
other than RDB (journal, in-memory) keep Optuna's per-parameter path.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, _get_single_value, check_distribution_compatibility
from optuna.pruners import _filter_study
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage


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
