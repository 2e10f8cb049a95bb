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

from centaur.runner.progress import FidelityLadder, ProgressPattern, StopRequest, TrialWatch
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
NO_HYPERBAND["centaur-null"] = NO_HYPERBAND["centaur"]
# Which settings each pruner takes (the others are left out of the identity and refused when given).
_TAKES = {
    "none": (),
    "median": ("warmup", "startup_trials", "interval", "fidelity"),
    "percentile": ("warmup", "startup_trials", "interval", "percentile", "fidelity"),
    "successive-halving": ("min_resource", "reduction_factor", "fidelity"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "fidelity"),
    "wilcoxon": ("warmup", "p_threshold"),
}
_LADDER_FACTOR = 3  # the rungs' growth with a fidelity when the pruner has no reduction factor (median ...)


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
    # The script's time-budget-like constant: trials run complete short schedules first (a ladder of
    # values of it), and the pruner decides between rungs. None: intermediate values from [task] progress.
    fidelity: str | None = None

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def takes(self, setting: str) -> bool:
        return setting in _TAKES[self.kind]

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
            elif key == "fidelity":
                values[key] = _name(key, value)
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
        shown = [k for k in _TAKES[self.kind] if k != "fidelity" or self.fidelity is not None]
        return f"{self.kind} (" + ", ".join(f"{k}={getattr(self, k)}" for k in shown) + ")"

    def rungs(self, full: float) -> list[int]:
        """The values of the fidelity a trial runs at, ascending, the last the script's own `full`: from
        the first rung (--pruner-min-resource, or full / factor**2) times the reduction factor while below
        full; a rung above full / factor is dropped (it would cost nearly a full run and decide little)."""
        factor = self.reduction_factor or {"successive-halving": 4, "hyperband": 3}.get(self.kind, _LADDER_FACTOR)
        top = int(math.floor(full))
        rung = self.min_resource or max(1, int(round(full / factor**2)))
        ladder = []
        while rung * factor <= full + 1e-9:  # the next rung is still no more than full: this one is short
            ladder.append(rung)
            rung *= factor
        return [*ladder, top] if top not in ladder else ladder

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


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip().replace(".", "_").isidentifier():
        raise PrunerError(f"--pruner-{key.replace('_', '-')} must name the script's time-budget-like parameter "
                          f"(e.g. TIME_BUDGET), got {value!r}")
    return value.strip()


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
    if settings.fidelity is not None:
        fidelity_full(task, settings.fidelity)
        return
    text = progress_text(task)
    if text is None:
        raise PrunerError(
            f"--pruner {settings.kind} needs intermediate values, and the task declares none: add "
            '[task] progress = "REGEX" to the centaur.toml beside the script, with groups (?P<value>...) and '
            "(?P<seconds>...) or (?P<step>...), or a time-budget fidelity: [task] fidelity = \"TIME_BUDGET\" "
            "or --pruner-fidelity NAME (docs/pruning.md)"
        )
    ProgressPattern.compile(text)


def task_fidelity(task: Any) -> str | None:
    """The task's `[task] fidelity`, the default of --pruner-fidelity."""
    table = getattr(getattr(task, "config", None), "task", None)
    name = table.get("fidelity") if isinstance(table, dict) else None
    return name if isinstance(name, str) and name.strip() else None


def fidelity_full(task: Any, name: str) -> float:
    """The script's own value of the fidelity parameter `name` (its full schedule); PrunerError when
    the task cannot run short schedules of it."""
    space = getattr(task, "space", None)
    if space is None or not hasattr(task, "evaluate_at"):
        raise PrunerError(f"--pruner-fidelity {name}: this task cannot run short schedules (scripts only)")
    if name in space.names:
        raise PrunerError(
            f"--pruner-fidelity {name}: {name} is tuned; a fidelity must be left to the pruner. Exclude it "
            f"in centaur.toml ([space] exclude = [{name!r}])"
        )
    if name in space.fixed:
        raise PrunerError(f"--pruner-fidelity {name}: {name} is fixed in centaur.toml; a fidelity must vary")
    full = space.constants.get(name)
    if full is None:
        found = ", ".join(sorted(k for k, v in space.constants.items() if _positive(v))) or "none"
        raise PrunerError(
            f"--pruner-fidelity {name}: the script has no untuned numeric parameter {name} "
            f"(its numeric ones: {found})"
        )
    if not _positive(full) or full < 2:
        raise PrunerError(f"--pruner-fidelity {name}: the script's value {full!r} is not a number >= 2")
    return float(full)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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
    was stopped by the pruner (its process killed, or with a fidelity its ladder left), `last` the last
    (step, value) reported. With `settings.fidelity`, the task runs short schedules and asks `decide`
    after each (no progress lines); else `pattern` reads them."""

    def __init__(
        self, study: optuna.Study, trial: optuna.Trial, pattern: ProgressPattern | None,
        settings: PrunerSettings | None = None,
    ) -> None:  # fmt: skip
        self.study, self.trial, self.pattern = study, trial, pattern
        self.stop = StopRequest()
        self.last: tuple[int, float] | None = None
        self.reports = 0
        self._queue: queue.Queue[tuple[list[int], float] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="centaur-pruning", daemon=True)
        fidelity = settings.fidelity if settings is not None else None
        ladder = FidelityLadder(fidelity, settings.rungs, self.decide) if fidelity and settings else None
        self.unit = fidelity or (pattern.unit if pattern is not None else "step")
        self.watch = TrialWatch(report=self._offer, stop=self.stop, fidelity=ladder)

    @property
    def pruned(self) -> bool:
        return self.stop.stopped

    def _offer(self, steps: list[int], value: float) -> None:  # the runner's reader thread: never blocks
        self._queue.put((steps, value))

    def _report(self, step: int, value: float) -> bool:
        try:
            self.trial.report(value, step)
        except Exception as e:  # a missed report only makes pruning coarser
            log.debug("trial %d: reporting step %d failed: %s", self.trial.number, step, e)
            return False
        self.last = (step, value)
        self.reports += 1
        return True

    def _should_prune(self) -> bool:
        try:
            return bool(self.trial.should_prune())
        except Exception as e:
            log.debug("trial %d: asking the pruner failed: %s", self.trial.number, e)
            return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            steps, value = item
            for step in steps:
                self._report(step, value)
            if self.stop.requested or not self._queue.empty():
                continue  # decide on the newest report only
            if self._should_prune() and self.last is not None:
                step, value = self.last
                self.stop.request(f"pruned at step {step} (value {value:g})")

    def decide(self, step: int, value: float) -> bool:
        """A fidelity rung's result: report it and ask the pruner now (the task waits for the answer)."""
        if not self._report(step, value) or not self._should_prune():
            return False
        self.stop.request(f"pruned at {self.unit}={step} (value {value:g})")
        self.stop.stopped = True  # nothing to kill: the task does not run the next rung
        return True

    def __enter__(self) -> TrialPruning:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)  # what was reported before the trial ended is still written
        self._thread.join(timeout=30)

    def attrs(self) -> dict[str, Any]:
        """The pruned trial's own attributes: where it stopped and the value it had there."""
        attrs: dict[str, Any] = {PROGRESS_UNIT_ATTR: self.unit}
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
    "fidelity_full",
    "progress_text",
    "pruner_differences",
    "study_pruner",
    "task_fidelity",
]
