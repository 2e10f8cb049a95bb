"""Parsing of human-friendly durations ("24h", "90m", "300s") and sizes ("3GiB", "512MB")."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {
    None: 1.0,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
DURATION_EXAMPLES = "24h, 90m, 600s"
SIZE_EXAMPLES = "8GiB, 512MiB, 2G"


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as 24h, 90m, 300s, 1.5h or a plain number of seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"not a duration: {text!r}; {_why_not(text, 'durations')}give e.g. {DURATION_EXAMPLES}")
        unit = m.group(2).lower() if m.group(2) else None
        seconds = float(m.group(1)) * _DURATION_UNITS[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"not a duration: {text!r}; a duration must be positive and finite, e.g. {DURATION_EXAMPLES}")
    return seconds


def parse_size(text: str | int) -> int:
    """Bytes in a size such as 3GiB, 512MB, 2G or a plain number of bytes (K/M/G/T are binary; > 0)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ValueError(f"not a size: {text!r}; {_why_not(text, 'sizes')}give e.g. {SIZE_EXAMPLES}")
        unit = (m.group(2) or "b").lower()[0]
        factor = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
        size = int(float(m.group(1)) * factor)
    if size <= 0:
        raise ValueError(f"not a size: {text!r}; a size must be at least one byte, e.g. {SIZE_EXAMPLES}")
    return size


def _why_not(text: object, what: str) -> str:
    """A hint for the commonest mistakes, ending in '; ' (empty when there is none)."""
    stripped = str(text).strip().lower()
    if stripped.startswith("-"):
        return f"{what} must be positive; "
    if stripped.lstrip("+") in ("nan", "inf", "infinity"):
        return f"{what} must be finite; "
    return ""


def format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.2f}h"
