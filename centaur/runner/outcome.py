"""Turn a finished subprocess (exit code + output) into a classified trial outcome."""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from centaur.runner.progress import LineSplitter
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


_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?nan|[-+]?inf(?:inity)?"


def metric_values(text: str, name: str, regex: str | None = None) -> list[float]:
    """Every value of metric `name` in `text`, in order: with `regex`, its one group on each match;
    otherwise `name: value` and `name=value` anywhere on a line (`epoch 3 val_loss=0.51 acc=0.8`) and JSON
    object lines holding `name` (a dotted path reaches into nested objects)."""
    text = text.replace("\r", "\n")
    if regex is not None:
        return [v for m in re.finditer(regex, text, re.MULTILINE) if (v := _number(m.group(1))) is not None]
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}[^\S\n]*[:=][^\S\n]*({_NUMBER})(?![\w.])", re.IGNORECASE)
    values: list[float] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("{") and name.split(".")[0] in stripped:
            value = _json_value(stripped, name)
            if value is not None:
                values.append(value)
                continue
        if name in line:
            values += [float(m.group(1)) for m in pattern.finditer(line)]
    return values


def metric_file_values(text: str, name: str) -> list[float]:
    """The values of `name` in a metrics file: one JSON object, or JSON lines (one object a line)."""
    value = _json_value(text, name)
    if value is not None:
        return [value]
    return [v for line in text.splitlines() if line.strip() and (v := _json_value(line, name)) is not None]


def reduce_values(values: list[float], how: str) -> float | None:
    """The value that counts: the last one, or the least/greatest finite one (a non-finite last value, or
    no finite value at all, is what is returned then, so a diverged run reads as diverged)."""
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    if how == "last" or not finite:
        return values[-1]
    return min(finite) if how == "min" else max(finite)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _json_value(text: str, name: str) -> float | None:
    import json

    try:
        obj = json.loads(text)
    except ValueError:
        return None
    for part in name.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    if isinstance(obj, bool):
        return None
    if isinstance(obj, (int, float)):
        return float(obj)
    return _number(obj) if isinstance(obj, str) else None


class MetricScanner:
    """`parse_metrics` over a stream fed in chunks of bytes, line by line in bounded memory (the runner's
    LineSplitter: lines split across chunks, `\r` ends a line, an overlong line, never a metric line, is
    skipped)."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self._lines = LineSplitter(self._scan)

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    def result(self) -> dict[str, float]:
        """The metrics of everything fed so far, the last line included even without its line break."""
        self._lines.close()
        return dict(self.metrics)

    def _scan(self, line: str) -> None:
        if ":" in line:
            self.metrics.update(parse_metrics(line))


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
