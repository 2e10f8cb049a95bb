"""Running one trial of a script: injection, subprocess with limits, outcome classification."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from centaur.runner.inject import InjectionError, format_value
    from centaur.runner.outcome import Outcome, classify, parse_metrics
    from centaur.runner.process import ProcessResult, run_script

# Lazy, so the launcher that starts every trial (centaur.runner.launch) imports only the standard library
# before the user's script runs. `inject` (the function) is imported from centaur.runner.inject: a lazy
# name equal to a submodule's would turn into that module once the submodule is imported.
_HOMES = {
    "InjectionError": "inject", "format_value": "inject",
    "Outcome": "outcome", "classify": "outcome", "parse_metrics": "outcome",
    "ProcessResult": "process", "run_script": "process",
}  # fmt: skip
__all__ = [
    "InjectionError", "Outcome", "ProcessResult", "classify", "format_value", "parse_metrics", "run_script",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"centaur.runner.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'centaur.runner' has no attribute {name!r}")
