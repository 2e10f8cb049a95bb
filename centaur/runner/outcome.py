"""Turn a finished subprocess (exit code + output) into a classified trial outcome."""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from centaur.tasks.base import TrialStatus

# `key: number` on a line of its own (blanks, not line breaks, around the number).
METRIC_LINE = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*):[^\S\n]+(-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?nan|-?inf)[^\S\n]*$",
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


class MetricScanner:
    """`parse_metrics` over a stream fed in chunks of bytes, in bounded memory: lines may be split across
    chunks, `\\r` ends a line, and a line longer than MAX_LINE bytes (never a metric line) is skipped."""

    MAX_LINE = 64 * 1024

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self._partial = b""
        self._skipping = False  # inside an overlong line: up to its end nothing counts

    def feed(self, data: bytes) -> None:
        data = data.replace(b"\r", b"\n")
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return
            data, self._skipping = data[end + 1:], False
        data = self._partial + data
        end = data.rfind(b"\n")
        if end >= 0:
            self._scan(data[: end + 1])
            data = data[end + 1:]
        self._partial = data
        if len(self._partial) > self.MAX_LINE:
            self._partial, self._skipping = b"", True

    def result(self) -> dict[str, float]:
        """The metrics of everything fed so far, the last line included even without its line break."""
        if self._partial and not self._skipping:
            self._scan(self._partial)
            self._partial = b""
        return dict(self.metrics)

    def _scan(self, block: bytes) -> None:
        if b":" in block:
            self.metrics.update(parse_metrics(block.decode("utf-8", errors="replace")))


def classify(
    returncode: int | None,
    output: str,
    metric: str,
    *,
    timed_out: bool,
    killed_by_cap: bool = False,
    metrics: Mapping[str, float] | None = None,
) -> Outcome:
    """`output` is the end of the log (for the error patterns); `metrics`, when given, the metric lines of
    the whole output (`MetricScanner`), otherwise they are parsed from `output`."""
    metrics = dict(metrics) if metrics is not None else parse_metrics(output)
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
