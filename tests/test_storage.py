"""Studies on real storages: PostgreSQL on 127.0.0.1:5432 and Optuna's journal file."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import centaur
from centaur.study.storage import StorageError, open_storage

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_or_skip() -> None:
    pytest.importorskip("psycopg2")
    try:
        open_storage(PG_URL)
    except StorageError as e:
        pytest.skip(f"PostgreSQL not reachable: {e}")


@pytest.mark.postgres
def test_tune_and_resume_on_postgres(tmp_path: Path) -> None:
    _postgres_or_skip()
    name = f"quad-{uuid.uuid4().hex[:8]}"
    first = centaur.tune(QUAD, method="tpe", budget="3s", storage=PG_URL, study_name=name, run_dir=tmp_path)
    assert first.summary.n_finished == 3
    resumed = centaur.tune(QUAD, method="tpe", budget="5s", storage=PG_URL, study_name=name, run_dir=tmp_path)
    assert resumed.summary.n_finished == 5 and resumed.summary.used_s == pytest.approx(5.0)
    trials = resumed.study.get_trials()
    assert trials[0].user_attrs["proposal_source"] == "baseline"
    assert [t.number for t in trials] == list(range(5))


def test_tune_on_journal_storage(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'journal.log'}"
    r = centaur.tune(QUAD, method="random", budget="3s", storage=url, run_dir=tmp_path)
    assert r.summary.n_finished == 3 and r.summary.best_value is not None


def test_unreachable_postgres_is_a_clear_error() -> None:
    pytest.importorskip("psycopg2")
    with pytest.raises(StorageError, match="cannot open storage"):
        open_storage("postgresql://nobody@127.0.0.1:1/none")
