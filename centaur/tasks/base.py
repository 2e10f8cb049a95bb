"""What a task is to the tuner: a search space plus a way to evaluate one configuration."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from centaur.space import SearchSpace


class TrialStatus(enum.StrEnum):
    """Outcome class of one trial. Everything but OK is a failure."""

    OK = "ok"
    OOM = "oom"  # out of memory: CUDA OOM, CPU allocator failure, MemoryError, killed by the cap
    CRASH = "crash"  # any other non-zero exit
    TIMEOUT = "timeout"  # killed by the per-trial timeout
    DIVERGED = "diverged"  # NaN/inf loss or the script's own FAIL marker
    INVALID = "invalid"  # configuration rejected before or at start-up (constraint, syntax error, import)
    LOST = "lost"  # the worker running it died; set by the study, never by a task
    OVERRIDDEN = "overridden"  # the script ran other values than the ones written (centaur.runner.verify)

    @property
    def failed(self) -> bool:
        return self is not TrialStatus.OK


@dataclass
class TrialResult:
    """What one evaluation produced.

    `cost_s` is what the trial counts against the compute budget: training seconds for a
    successful trial, full wall seconds for a failed one (the reference study's rule).
    """

    status: TrialStatus
    value: float | None = None
    cost_s: float = 0.0
    wall_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    log_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A tunable task. `evaluate` must never raise for a bad configuration: it returns a failure."""

    name: str
    space: SearchSpace
    metric: str

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult: ...

    def describe(self) -> str:
        """Plain-text task description for LLM prompts: what is trained, hardware, memory cap, budget."""
        ...
