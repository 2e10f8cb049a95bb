"""Stopping bad trials early: the study's pruner settings, and the watch that reports a running trial's
intermediate values to Optuna and stops the trial when the pruner says so (docs/pruning.md).

- The settings (`PrunerSettings`) are part of what defines a study: they are recorded in its identity
  under "pruner" when not "none" (a stored identity without the key means "none", so studies from
  before pruning resume unchanged), and every worker builds its pruner from there.
- A running trial's output lines are matched by the task's `[task] progress` regex on the runner's
  reader thread (centaur.runner.progress); the reports are queued to a thread of this module, which
  calls `trial.report(value, step)` and `trial.should_prune()`, so the trial's output never waits on
  the storage. A storage error only skips that report or check: a trial is never pruned on an error.
- A pruned trial is killed (its process group) and recorded as Optuna PRUNED, user attributes
  status=pruned, cost_s (its wall seconds: what it really ran), pruned_step, pruned_value and
  progress_unit (centaur.study.loop.record_result).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import warnings
from dataclasses import dataclass, fields
from typing import Any

import optuna
from optuna.pruners import BasePruner

from centaur.runner.progress import ProgressPattern, StopRequest, TrialWatch
from centaur.study.schema import IDENTITY_ATTR
from centaur.units import parse_duration

log = logging.getLogger(__name__)

PRUNERS = ("none", "median", "percentile", "successive-halving", "hyperband", "wilcoxon")
PRUNER_KEY = "pruner"  # the key of the settings in the study's identity
PRUNED_STATUS = "pruned"
PRUNED_STEP_ATTR = "pruned_step"  # the last step the pruned trial reported
PRUNED_VALUE_ATTR = "pruned_value"  # the value it reported there
PROGRESS_UNIT_ATTR = "progress_unit"  # "s" or "step"
# Methods whose generations Hyperband's brackets would split: each sampler would see its bracket only.
NO_HYPERBAND = {
    "cmaes": "CMA-ES tells whole generations, and Hyperband shows each trial's sampler only its own bracket, "
    "so one generation would mix brackets pruned at different resources",
    "centaur": "Centaur's CMA-ES tells whole generations, and Hyperband shows each trial's sampler only its "
    "own bracket, so one generation would mix brackets pruned at different resources",
}
# Which settings each pruner takes (the others are left out of the identity and refused when given).
_TAKES = {
    "none": (),
    "median": ("warmup", "startup_trials", "interval"),
    "percentile": ("warmup", "startup_trials", "interval", "percentile"),
    "successive-halving": ("min_resource", "reduction_factor"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "wilcoxon": ("warmup", "p_threshold"),
}


class PrunerError(ValueError):
    """A pruner setting that cannot mean anything, or a pruner this study cannot use; names the option."""


@dataclass(frozen=True)
class PrunerSettings:
    """A study's pruner. Steps are what the task's progress regex reports: seconds by default."""

    kind: str = "none"
    warmup: int = 0  # median/percentile: steps before a trial can be pruned; wilcoxon: n_startup_steps
    startup_trials: int = 5  # median/percentile: finished trials before any pruning
    interval: int = 1  # median/percentile: check every this many steps
    percentile: float = 25.0  # percentile: prune when worse than this percentile of the others
    min_resource: int | None = None  # successive-halving/hyperband: the first rung (None: Optuna's "auto")
    max_resource: int | None = None  # hyperband: the last (None: "auto", the longest finished trial)
    reduction_factor: int | None = None  # successive-halving/hyperband (None: Optuna's default, 4 and 3)
    p_threshold: float = 0.1  # wilcoxon

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @classmethod
    def parse(cls, kind: str | None = None, **given: Any) -> PrunerSettings:
        """Settings from the command line or `tune(...)`: durations ("60s") or plain numbers for steps;
        None values are not given. A setting the pruner does not take is refused by name."""
        kind = (kind or "none").strip().lower()
        if kind not in PRUNERS:
            raise PrunerError(f"--pruner must be one of {', '.join(PRUNERS)}, got {kind!r}")
        given = {k: v for k, v in given.items() if v is not None}
        known = {f.name for f in fields(cls)} - {"kind"}
        unknown = set(given) - known
        if unknown:
            raise PrunerError(f"unknown pruner setting(s) {sorted(unknown)}; known: {sorted(known)}")
        stray = sorted(set(given) - set(_TAKES[kind]))
        if stray:
            flags = ", ".join("--pruner-" + k.replace("_", "-") for k in stray)
            takes = ", ".join("--pruner-" + k.replace("_", "-") for k in _TAKES[kind]) or "no settings"
            raise PrunerError(f"{flags}: not a setting of --pruner {kind} (it takes {takes})")
        values: dict[str, Any] = {}
        for key, value in given.items():
            if key in ("warmup", "interval", "min_resource", "max_resource"):
                values[key] = _steps(key, value, minimum=1 if key != "warmup" else 0)
            elif key in ("startup_trials", "reduction_factor"):
                values[key] = _whole(key, value, minimum=0 if key == "startup_trials" else 2)
            elif key == "percentile":
                values[key] = _number(key, value, 0.0, 100.0)
            else:
                values[key] = _number(key, value, 0.0, 1.0)
        return cls(kind=kind, **values)

    def as_dict(self) -> dict[str, Any]:
        """What the study's identity records: the kind and the settings this pruner takes."""
        return {"kind": self.kind, **{k: getattr(self, k) for k in _TAKES[self.kind]}}

    @classmethod
    def from_dict(cls, data: Any) -> PrunerSettings:
        """The settings a study recorded; None or a missing key: "none"."""
        if not isinstance(data, dict) or data.get("kind", "none") == "none":
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        if not self.active:
            return "none"
        return f"{self.kind} (" + ", ".join(f"{k}={getattr(self, k)}" for k in _TAKES[self.kind]) + ")"

    def build(self) -> BasePruner:
        p = optuna.pruners
        if self.kind == "median":
            return p.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=self.warmup,
                                  interval_steps=self.interval)
        if self.kind == "percentile":
            return p.PercentilePruner(self.percentile, n_startup_trials=self.startup_trials,
                                      n_warmup_steps=self.warmup, interval_steps=self.interval)
        if self.kind == "successive-halving":
            rf = {} if self.reduction_factor is None else {"reduction_factor": self.reduction_factor}
            return p.SuccessiveHalvingPruner(min_resource=self.min_resource or "auto", **rf)
        if self.kind == "hyperband":
            rf = {} if self.reduction_factor is None else {"reduction_factor": self.reduction_factor}
            return p.HyperbandPruner(min_resource=self.min_resource or 1, max_resource=self.max_resource or "auto",
                                     **rf)
        if self.kind == "wilcoxon":
            with warnings.catch_warnings():  # "experimental": its interface may change, ours does not
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return p.WilcoxonPruner(p_threshold=self.p_threshold, n_startup_steps=self.warmup)
        return p.NopPruner()


def _steps(key: str, value: Any, minimum: int) -> int:
    try:
        steps = parse_duration(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as e:
        raise PrunerError(f"--pruner-{key.replace('_', '-')}: {e}") from None
    if not math.isfinite(steps) or steps < minimum or isinstance(value, bool):
        raise PrunerError(f"--pruner-{key.replace('_', '-')} must be a duration such as 60s or a number of steps "
                          f">= {minimum}, got {value!r}")
    return int(round(steps))


def _whole(key: str, value: Any, minimum: int) -> int:
    try:
        n = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        n = None
    if n is None or n < minimum:
        raise PrunerError(f"--pruner-{key.replace('_', '-')} must be a whole number >= {minimum}, got {value!r}")
    return n


def _number(key: str, value: Any, low: float, high: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not low < x < high:
        raise PrunerError(f"--pruner-{key.replace('_', '-')} must be a number in ({low:g}, {high:g}), got {value!r}")
    return x


# -- the study side --------------------------------------------------------------------------------
def progress_text(task: Any) -> str | None:
    """The task's `[task] progress` regex, if it declares one."""
    table = getattr(getattr(task, "config", None), "task", None)
    text = table.get("progress") if isinstance(table, dict) else None
    return text if isinstance(text, str) and text.strip() else None


def check_pruning(task: Any, method: str, settings: PrunerSettings, *, own_loop: bool = False) -> None:
    """Refuse a pruner the run cannot use, with what to do instead."""
    if not settings.active:
        return
    if own_loop:
        raise PrunerError(f"--pruner {settings.kind}: {method} runs its own loop and does not prune; use --pruner none")
    if settings.kind == "hyperband" and method in NO_HYPERBAND:
        raise PrunerError(
            f"--pruner hyperband cannot be used with --method {method}: {NO_HYPERBAND[method]}. "
            "Use --pruner median, percentile or successive-halving with it, or hyperband with tpe"
        )
    text = progress_text(task)
    if text is None:
        raise PrunerError(
            f"--pruner {settings.kind} needs intermediate values, and the task declares none: add "
            '[task] progress = "REGEX" to the centaur.toml beside the script, with groups (?P<value>...) and '
            "(?P<seconds>...) or (?P<step>...) (docs/pruning.md)"
        )
    ProgressPattern.compile(text)


def study_pruner(study: optuna.Study) -> PrunerSettings:
    """The pruner the study was created with (its identity; none when it recorded none)."""
    identity = study.user_attrs.get(IDENTITY_ATTR)
    return PrunerSettings.from_dict(identity.get(PRUNER_KEY) if isinstance(identity, dict) else None)


def pruner_differences(settings: PrunerSettings, stored_identity: Any) -> list[str]:
    """The difference between this run's pruner and the one a stored identity recorded, as a phrase."""
    stored = PrunerSettings.from_dict(stored_identity.get(PRUNER_KEY) if isinstance(stored_identity, dict) else None)
    if stored == settings:
        return []
    return [f"the pruner is {settings.describe()}, the study's is {stored.describe()}"]


class TrialPruning:
    """The watch of one running trial: reports its intermediate values and asks the pruner, on a thread.

    Used as a context manager around the trial's evaluation; `pruned` afterwards says whether the trial
    was stopped by the pruner (its process killed), `last` the last (step, value) reported."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, pattern: ProgressPattern) -> None:
        self.study, self.trial, self.pattern = study, trial, pattern
        self.stop = StopRequest()
        self.last: tuple[int, float] | None = None
        self.reports = 0
        self._queue: queue.Queue[tuple[list[int], float] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="centaur-pruning", daemon=True)
        self.watch = TrialWatch(report=self._offer, stop=self.stop)

    @property
    def pruned(self) -> bool:
        return self.stop.stopped

    def _offer(self, steps: list[int], value: float) -> None:  # the runner's reader thread: never blocks
        self._queue.put((steps, value))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            steps, value = item
            for step in steps:
                try:
                    self.trial.report(value, step)
                except Exception as e:  # a missed report only makes pruning coarser
                    log.debug("trial %d: reporting step %d failed: %s", self.trial.number, step, e)
                    continue
                self.last = (step, value)
                self.reports += 1
            if self.stop.requested or not self._queue.empty():
                continue  # decide on the newest report only
            try:
                prune = self.trial.should_prune()
            except Exception as e:
                log.debug("trial %d: asking the pruner failed: %s", self.trial.number, e)
                continue
            if prune and self.last is not None:
                step, value = self.last
                self.stop.request(f"pruned at step {step} (value {value:g})")

    def __enter__(self) -> TrialPruning:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)  # what was reported before the trial ended is still written
        self._thread.join(timeout=30)

    def attrs(self) -> dict[str, Any]:
        """The pruned trial's own attributes: where it stopped and the value it had there."""
        attrs: dict[str, Any] = {PROGRESS_UNIT_ATTR: self.pattern.unit}
        if self.last is not None:
            attrs[PRUNED_STEP_ATTR], attrs[PRUNED_VALUE_ATTR] = self.last[0], float(self.last[1])
        return attrs


__all__ = [
    "PRUNERS",
    "PRUNED_STATUS",
    "PrunerError",
    "PrunerSettings",
    "TrialPruning",
    "check_pruning",
    "progress_text",
    "pruner_differences",
    "study_pruner",
]
