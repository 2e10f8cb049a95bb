"""A trial's parameters go to an RDB storage in one transaction, with exactly the values Optuna's
per-parameter path would have written."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy
from test_centaur import Bowl

import centaur
from centaur.study import loop

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("method", ["tpe", "cmaes", "random"])
def test_batched_parameters_are_optunas_own_values_in_fewer_statements(tmp_path: Path, method: str, monkeypatch):
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    runs = {}
    try:
        for batched in (True, False):
            if not batched:
                monkeypatch.setattr(loop, "suggest_all", lambda trial, distributions: 0)
            statements.clear()
            result = centaur.tune(Bowl(), method=method, n_trials=12, budget=None, seed=1,
                                  run_dir=tmp_path / str(batched), storage=f"sqlite:///{tmp_path / f'{batched}.db'}")
            transactions = sum(s.strip().upper() == "BEGIN" for s in statements)  # storage.py begins each one
            runs[batched] = ([t.params for t in result.study.get_trials()], len(statements), transactions)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    assert runs[True][0] == runs[False][0]  # the same configurations, trial by trial
    assert all(len(p) == 5 for p in runs[True][0])
    assert runs[False][2] - runs[True][2] == 12 * 4  # one transaction for the 5 parameters, not 5
    assert runs[True][1] < runs[False][1]


def test_a_retried_proposal_keeps_what_was_written(tmp_path: Path):
    from centaur.study.optuna_private import suggest_all

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=optuna.samplers.RandomSampler(0))
    trial = study.ask()
    space = Bowl.space
    assert suggest_all(trial, space.distributions()) == len(space.params)
    first = space.suggest(trial)
    assert suggest_all(trial, space.distributions()) == 0  # already written: nothing is sampled again
    assert space.suggest(trial) == first
    assert study._storage.get_trial(trial._trial_id).params == trial.params
