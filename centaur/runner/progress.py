"""Intermediate values from a running trial's output, for pruning (docs/pruning.md).

`[task] progress = "REGEX"` in centaur.toml says which output lines carry an intermediate value. The
regex has a named group `value` (the number reported) and at most one of:
- `seconds` (or `elapsed`): elapsed training seconds as the script prints them. The default unit of
  steps: scripts with a fixed time budget run different numbers of optimizer steps, so steps compare
  trials only when they are seconds;
- `step`: an integer step the script counts itself (for scripts that run a fixed number of steps);
- neither: the step is the wall seconds since the trial started (start-up included).

Seconds become integer steps, filled so that every trial has a value at every whole second from its
first report on: a report at 10.4 s after one at 5.0 s is reported at steps 6..10 (the newest value
for each second passed). So Optuna's pruners, which compare trials at equal steps, find common steps
whatever a script's printing cadence. `\\r`-separated progress lines (a live progress bar) count like
lines. Nothing here knows Optuna: `ProgressReader` hands (steps, value) to a callback.

The running trial's watch (`TrialWatch`: where reports go, and the request to stop it) reaches the
runner through a context variable, so `Task.evaluate` keeps its signature: the study loop sets it
around `evaluate`, and `ScriptTask.run_work_copy` reads it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_FILL = 24 * 3600  # whole seconds filled by one report at most (a clock jump must not write millions)
STEP_GROUPS = ("seconds", "elapsed", "step")


class ProgressPatternError(ValueError):
    """`[task] progress` is not a usable regex; the message says what to fix."""


@dataclass(frozen=True)
class ProgressPattern:
    """A compiled `[task] progress` regex and what its groups mean."""

    text: str
    regex: re.Pattern[str]
    position: str | None  # "seconds" (also for `elapsed`), "step", or None: wall seconds since the start
    group: str | None = None  # the regex group of the position

    @classmethod
    def compile(cls, text: str) -> ProgressPattern:
        if not isinstance(text, str) or not text.strip():
            raise ProgressPatternError(
                f"[task] progress = {text!r}: must be a regex string with a (?P<value>...) group, e.g. "
                r'progress = "^progress t=(?P<seconds>[0-9.]+)s val=(?P<value>[0-9.eE+-]+)"'
            )
        try:
            regex = re.compile(text)
        except re.error as e:
            raise ProgressPatternError(f"[task] progress = {text!r}: not a valid regex: {e}") from None
        groups = set(regex.groupindex)
        if "value" not in groups:
            raise ProgressPatternError(
                f"[task] progress = {text!r}: needs a named group (?P<value>...) for the reported number"
            )
        given = [g for g in STEP_GROUPS if g in groups]
        if len(given) > 1:
            raise ProgressPatternError(
                f"[task] progress = {text!r}: give one of the groups {', '.join(STEP_GROUPS)}, not {given}"
            )
        position = None if not given else "step" if given[0] == "step" else "seconds"
        return cls(text, regex, position, given[0] if given else None)

    @property
    def unit(self) -> str:
        """What a step is: "s" (seconds, the default) or "step"."""
        return "step" if self.position == "step" else "s"

    def match(self, line: str) -> tuple[float | None, float] | None:
        """(position or None, value) of a progress line; None for any other line or a value that is
        not a number."""
        m = self.regex.search(line)
        if m is None:
            return None
        try:
            value = float(m.group("value"))
            position = float(m.group(self.group)) if self.group else None
        except (TypeError, ValueError, IndexError):
            return None
        if position is not None and not math.isfinite(position):
            return None
        return position, value


class ProgressReader:
    """Turns output lines into reports: `report(steps, value)` with the integer steps (ascending, new)
    that one progress line fills. Non-finite values are skipped (the trial diverges: its end says so)."""

    def __init__(
        self,
        pattern: ProgressPattern,
        report: Callable[[list[int], float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pattern = pattern
        self.report = report
        self.clock = clock
        self.start = clock()
        self.last_step: int | None = None

    def feed_line(self, line: str) -> None:
        found = self.pattern.match(line)
        if found is None:
            return
        position, value = found
        if not math.isfinite(value):
            return
        if self.pattern.position == "step":
            assert position is not None
            step = int(position)
            if step < 0 or (self.last_step is not None and step <= self.last_step):
                return
            steps = [step]
        else:
            seconds = position if position is not None else self.clock() - self.start
            mark = int(math.floor(seconds))
            if mark < 0 or (self.last_step is not None and mark <= self.last_step):
                return  # the same second as the last report: the first one counts
            first = mark if self.last_step is None else max(self.last_step + 1, mark - MAX_FILL)
            steps = list(range(first, mark + 1))
        self.last_step = steps[-1]
        self.report(steps, value)


class LineSplitter:
    """Bytes fed in chunks -> complete lines (`\\n` or `\\r` ends one) for `on_line`, in bounded memory:
    a line longer than MAX_LINE bytes is skipped."""

    MAX_LINE = 64 * 1024

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self._partial = b""
        self._skipping = False

    def feed(self, data: bytes) -> None:
        data = data.replace(b"\r", b"\n")
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return
            data, self._skipping = data[end + 1:], False
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line:
                self.on_line(line.decode("utf-8", errors="replace"))
        if len(self._partial) > self.MAX_LINE:
            self._partial, self._skipping = b"", True

    def close(self) -> None:
        """The last line, even without its line break."""
        if self._partial and not self._skipping:
            self.on_line(self._partial.decode("utf-8", errors="replace"))
        self._partial = b""


class StopRequest:
    """A request, from any thread, that the running trial stop now (a pruner's decision). `stopped` says
    afterwards whether the trial was killed for it (False when it had ended on its own first)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.stopped = False

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class FidelityLadder:
    """A time-budget fidelity (docs/pruning.md): the task runs the trial's configuration at each of
    `rungs(full)` values of the script's parameter `name` in turn, each a complete short schedule, and
    after each short one asks `decide(step, value)` whether to stop there (True: pruned)."""

    name: str
    rungs: Callable[[float], list[int]]
    decide: Callable[[int, float], bool]


@dataclass
class TrialWatch:
    """What the runner needs to stream a trial's progress: where each progress report goes, and the
    request that stops the trial; with a fidelity, the ladder of short runs instead of progress lines."""

    report: Callable[[list[int], float], None]
    stop: StopRequest
    fidelity: FidelityLadder | None = None


_current: contextvars.ContextVar[TrialWatch | None] = contextvars.ContextVar("centaur_trial_watch", default=None)


@contextlib.contextmanager
def watching(watch: TrialWatch | None) -> Iterator[None]:
    """Make `watch` the running trial's watch (None: no watch) while the block runs."""
    token = _current.set(watch)
    try:
        yield
    finally:
        _current.reset(token)


def current_watch() -> TrialWatch | None:
    return _current.get()
