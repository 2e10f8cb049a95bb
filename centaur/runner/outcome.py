"""Turn a finished subprocess (exit code + output) into a classified trial outcome."""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass

from centaur.tasks.base import TrialStatus

METRIC_LINE = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*):\s+(-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?nan|-?inf)\s*$",
    re.MULTILINE | re.IGNORECASE,
)
OOM_PATTERNS = re.compile(
    r"CUDA out of memory|OutOfMemoryError|out of memory|DefaultCPUAllocator: can't allocate memory|"
    r"\bMemoryError\b|std::bad_alloc|Cannot allocate memory|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)
DIVERGED_PATTERNS = re.compile(r"^FAIL\b|loss diverged|\bdiverged\b", re.MULTILINE | re.IGNORECASE)
INVALID_PATTERNS = re.compile(
    r"^INVALID:|^(SyntaxError|IndentationError|TabError|ModuleNotFoundError|ImportError)\b", re.MULTILINE
)
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$", re.MULTILINE)


@dataclass
class Outcome:
    status: TrialStatus
    value: float | None
    metrics: dict[str, float]
    error: str | None


def parse_metrics(text: str) -> dict[str, float]:
    """Every `key: number` line; the last occurrence of a key wins (the summary block comes last)."""
    return {m.group(1): float(m.group(2)) for m in METRIC_LINE.finditer(text.replace("\r", "\n"))}


def classify(
    returncode: int | None, output: str, metric: str, *, timed_out: bool, killed_by_cap: bool = False
) -> Outcome:
    metrics = parse_metrics(output)
    value = metrics.get(metric)
    if timed_out:
        return Outcome(TrialStatus.TIMEOUT, None, metrics, "killed after the per-trial timeout")
    if returncode == 0:
        if DIVERGED_PATTERNS.search(output):
            return Outcome(TrialStatus.DIVERGED, None, metrics, "the script reported a diverged run (FAIL)")
        if value is None:
            return Outcome(
                TrialStatus.CRASH, None, metrics, f"exit code 0 but no '{metric}: <number>' line in the output"
            )
        if not math.isfinite(value):
            return Outcome(TrialStatus.DIVERGED, None, metrics, f"{metric} is {value}")
        return Outcome(TrialStatus.OK, value, metrics, None)
    last_error = _last_exception(output)
    if INVALID_PATTERNS.search(output):
        return Outcome(TrialStatus.INVALID, None, metrics, last_error or "configuration rejected by the script")
    if OOM_PATTERNS.search(output) or killed_by_cap:
        return Outcome(TrialStatus.OOM, None, metrics, last_error or "out of memory")
    if returncode is not None and returncode < 0 and -returncode == signal.SIGKILL:
        # SIGKILL that we did not send: the kernel's OOM killer (or an external cap).
        return Outcome(TrialStatus.OOM, None, metrics, "killed by SIGKILL (out of memory)")
    if DIVERGED_PATTERNS.search(output):
        return Outcome(TrialStatus.DIVERGED, None, metrics, "the script reported a diverged run (FAIL)")
    return Outcome(TrialStatus.CRASH, None, metrics, last_error or f"exited with code {returncode}")


def _last_exception(output: str) -> str | None:
    matches = EXCEPTION_LINE.findall(output)
    if matches:
        return matches[-1].strip()[:300]
    invalid = re.search(r"^INVALID:.*$", output, re.MULTILINE)
    return invalid.group(0)[:300] if invalid else None
