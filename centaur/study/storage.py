"""Opening an Optuna storage from a URL: SQLite by default, journal files, PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


class StorageError(RuntimeError):
    """The storage cannot be opened; the message says which URL and why."""


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a commit no longer waits for an fsync (it was ~15 ms,
    dozens per trial), readers do not block the writer, and a killed process still loses nothing
    committed (only a power cut can drop the last commits). Not for network file systems."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        # Python's sqlite3 would open a transaction only at the first write, so Optuna's read-check-write
        # steps (taking a queued trial) were not atomic: two workers could take the same trial.
        # Transactions are begun explicitly instead, see `_sqlite_begin`.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # Switching to WAL needs the database to itself; once it is WAL (it persists), only read the mode.
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:
            pass  # busy right now (another process switching it): this connection keeps the defaults
        finally:
            cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin(conn: Connection) -> None:
    """A real SQLite transaction from its first read: when another process commits between a read and
    the write that depends on it, the write fails (SQLITE_BUSY_SNAPSHOT) instead of acting on stale data;
    Optuna raises StorageInternalError and the caller's retry repeats the step. Not BEGIN IMMEDIATE:
    Optuna nests a second connection inside an open one while it creates a storage, which would wait
    on itself."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN")


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}"


def open_storage(url: str | BaseStorage) -> BaseStorage:
    """`sqlite:///path.db`, `postgresql://user@host/db`, any SQLAlchemy URL, or `journal:PATH` for
    Optuna's journal file storage (several processes on one machine). A storage object is passed
    through (the benchmark harness runs simulated studies on an InMemoryStorage)."""
    if isinstance(url, BaseStorage):
        return url
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:") :]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # Several local processes may write at once: wait for the lock instead of failing.
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        url = _with_installed_driver(url)
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except optuna.exceptions.StorageInternalError as e:
        raise StorageError(f"cannot open storage {redact(url)}: {e.__cause__ or e}") from None
    except (OSError, ValueError, ImportError) as e:
        raise StorageError(f"cannot open storage {redact(url)}: {e}") from None
    except Exception as e:  # SQLAlchemy raises its own hierarchy (OperationalError, ArgumentError ...)
        if type(e).__module__.startswith("sqlalchemy"):
            raise StorageError(f"cannot open storage {redact(url)}: {str(e).splitlines()[0]}") from None
        raise


def _with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; use psycopg2 when only that is installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def redact(url: str) -> str:
    """The URL without a password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url
