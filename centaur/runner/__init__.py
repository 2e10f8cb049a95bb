"""Running one trial of a script: injection, subprocess with limits, outcome classification."""

from centaur.runner.inject import InjectionError, format_value, inject
from centaur.runner.outcome import Outcome, classify, parse_metrics
from centaur.runner.process import ProcessResult, run_script

__all__ = [
    "InjectionError",
    "Outcome",
    "ProcessResult",
    "classify",
    "format_value",
    "inject",
    "parse_metrics",
    "run_script",
]
