"""The errors a user's input or environment can cause: every entry point (the CLI's commands, the worker
process) prints these as one `error:` line and exits with code 2; anything else is a bug and keeps its
traceback."""

from __future__ import annotations

from centaur.llm.errors import LLMError
from centaur.study.durable import StorageUnavailable
from centaur.study.loop import HopelessStudy
from centaur.study.storage import StorageError

# ValueError covers the input errors of every module (ConfigError, SpaceError, MethodError, StudyMismatch,
# BenchError, ReportInputError ...); the rest are runtime conditions with an actionable message.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    LLMError,
    StorageError,
    StorageUnavailable,
    HopelessStudy,
)
