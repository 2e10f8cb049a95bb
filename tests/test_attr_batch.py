"""A trial's attributes go to the storage in one transaction, with Optuna's own semantics: values
readable back, keys overwritten, and a finished trial refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from centaur.study.optuna_private import set_trial_attrs, set_user_attrs
from centaur.study.storage import StorageError, open_storage

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _storage(kind: str, tmp_path: Path) -> optuna.storages.BaseStorage:
    if kind == "postgresql":
        pytest.importorskip("psycopg2")
        try:
            return open_storage(PG_URL)
        except StorageError as e:
            pytest.skip(f"PostgreSQL not reachable: {e}")
    return open_storage(f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'j.log'}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "journal"])
def test_attributes_written_together_read_back_as_optuna_writes_them(tmp_path: Path, kind: str) -> None:
    storage = _storage(kind, tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    trial.set_user_attr("status", "running")
    set_user_attrs(trial, {"status": "ok", "cost_s": 1.5, "metrics": {"val_bpb": 0.97}, "tags": [1, "a"]})
    set_trial_attrs(study._storage, trial._trial_id, system_attrs={"constraints:feasible": 0.0, "gen": 3})
    assert trial.user_attrs["status"] == "ok"  # the Trial's own copy is in step
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {"status": "ok", "cost_s": 1.5, "metrics": {"val_bpb": 0.97}, "tags": [1, "a"]}
    assert stored.system_attrs["constraints:feasible"] == 0.0 and stored.system_attrs["gen"] == 3
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_trial_attrs(study._storage, trial._trial_id, user_attrs={"late": True})
    assert "late" not in study._storage.get_trial(trial._trial_id).user_attrs


def test_one_transaction_for_all_keys(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask()
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        set_user_attrs(trial, {f"k{i}": i for i in range(8)})
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    assert sum(s.strip().upper() == "BEGIN" for s in statements) == 1
    assert len(statements) <= 4  # begin, read the trial, one upsert (commit is not a cursor statement)
