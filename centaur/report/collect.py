"""Reading studies into plain per-run records: from an Optuna storage (bench or tune) or the study's trial file."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from centaur.bench.grid import SECONDS_ATTR
from centaur.paths import absolute_path, absolute_storage_url
from centaur.study.records import cost_of, is_success, status_of
from centaur.study.schema import (
    AGENT_DECISION_ATTR,
    AGENT_IMPROVEMENT_ATTR,
    AGENT_MARGIN_ATTR,
    AGENT_MARGIN_TRIAL_ATTR,
    AGENT_NOISE_ATTR,
    AGENT_NOISE_PAIRS_ATTR,
    AGENT_RULE_ATTR,
    CONFIG_ATTR,
    SOURCE_ATTR,
    STUDY_BUDGET,
    STUDY_METHOD,
    STUDY_SEED,
    STUDY_TASK,
    VERIFIED_ATTR,
)
from centaur.study.storage import open_storage

if TYPE_CHECKING:
    from centaur.surrogate.instrument import Instrument

REFERENCE_BUDGET_S = 86400.0  # the reference study's 24 h
INSTRUMENT_ATTR = "surrogate_instrument"  # = centaur.surrogate.instrument.INSTRUMENT_ATTR (a test keeps them equal)
SHARE_ATTR = "llm_share"  # = centaur.methods.centaur.trust.SHARE_ATTR: the LLM share that decided a Centaur trial


class ReportInputError(ValueError):
    """Nothing to report from the given input; the message says what was expected."""


@dataclass
class TrialRecord:
    number: int
    status: str  # "ok" or a failure class
    value: float | None  # objective of a successful trial
    cost_s: float
    noise_free: float | None = None  # surrogate studies: the value without observation noise
    distance: float | None = None  # surrogate studies: the configuration's distance to the surrogate's data
    epistemic_sd: float | None = None  # surrogate studies: the spread of the surrogate's ensemble members there
    llm_calls: int = 0
    llm_seconds: float = 0.0
    source: str = ""  # proposal_source: the sampler's name, "baseline", "llm", "llm-fallback:<kind>", ...
    config_key: str | None = None  # the configuration's identity (repeated evaluations share it)
    llm_share: float | None = None  # Centaur: the share of LLM turns when this trial was decided
    verified: str | None = None  # script tasks: verified | unverified | overridden (centaur.runner.verify)
    decision: str | None = None  # agent-code: baseline, kept, reverted, rejected, failed
    improvement: float | None = None  # agent-code: how much the trial beat the best by (its mean of runs)
    margin: float | None = None  # agent-code: what it had to beat the best by to be kept


@dataclass
class Run:
    """One study: a method on a task with one seed."""

    name: str
    method: str
    seed: int
    task: str
    budget_s: float | None
    trials: list[TrialRecord]
    seconds: float | None = None  # wall seconds the benchmark spent on this study
    llm_known: bool = True  # the source records LLM calls (the reference trials file does not)
    instrument: Instrument | None = None  # surrogate studies: how finely the surrogate resolves differences
    noise: dict[str, Any] = field(default_factory=dict)  # agent-code: noise_sd, margin, rule, noise pairs
    counted: list[TrialRecord] = field(init=False)

    def __post_init__(self) -> None:
        # A trial counts when it started within the budget (what the study loop spends); a run that went on
        # past its budget (the reference study's requeued jobs) is cut there.
        self.counted, used = [], 0.0
        for t in self.trials:
            if self.budget_s is not None and used >= self.budget_s:
                break
            self.counted.append(t)
            used += t.cost_s

    @property
    def used_s(self) -> float:
        return float(sum(t.cost_s for t in self.counted))

    @property
    def best_trial(self) -> TrialRecord | None:
        ok = [t for t in self.counted if t.value is not None]
        return min(ok, key=lambda t: t.value) if ok else None

    @property
    def best(self) -> float | None:
        b = self.best_trial
        return None if b is None else b.value

    @property
    def regret(self) -> float | None:
        """Normalised regret of the noise-free value at the best trial (0: best known, 1: the defaults);
        None without an instrument record or a noise-free value."""
        b = self.best_trial
        if self.instrument is None or b is None or b.noise_free is None:
            return None
        return self.instrument.regret(b.noise_free)

    @property
    def failure_share(self) -> float:
        """Share of counted trials that failed, of any cause (the study's "OOM%"). A pruned trial did not
        fail (the pruner stopped it); `failures` still lists it, as "pruned"."""
        failed = sum(t.status not in ("ok", "pruned") for t in self.counted)
        return failed / len(self.counted) if self.counted else math.nan

    @property
    def failures(self) -> Counter:
        return Counter(t.status for t in self.counted if t.status != "ok")

    def best_repeats(self) -> tuple[int, float | None]:
        """How many successful counted trials evaluated the best trial's configuration, and their mean value
        (the winner's curse: the best of many noisy draws of one configuration is below its mean)."""
        b = self.best_trial
        if b is None:
            return 0, None
        if b.config_key is None:
            return 1, b.value
        values = [t.value for t in self.counted if t.value is not None and t.config_key == b.config_key]
        return len(values), float(np.mean(values))

    def incumbent(self) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative cost (s) at the end of each counted trial, and the best value so far (NaN before any)."""
        cost = np.cumsum([t.cost_s for t in self.counted]) if self.counted else np.zeros(0)
        vals = np.array([t.value if t.value is not None else np.inf for t in self.counted], dtype=float)
        best = np.minimum.accumulate(vals) if len(vals) else vals
        return cost, np.where(np.isfinite(best), best, np.nan)


def _storage_url(target: str | Path) -> str:
    text = str(target)
    if "://" in text or text.startswith("journal:"):
        return absolute_storage_url(text)
    path = absolute_path(text)
    if path.is_dir():
        for name in ("bench.journal", "bench.db", "study.db"):
            if (path / name).is_file():
                return _storage_url(path / name)
        raise ReportInputError(f"{path} has no bench.journal, bench.db or study.db "
                               "(give a bench/run directory, a storage file or a storage URL)")
    if path.is_file():
        return f"journal:{path.resolve()}" if path.suffix in (".journal", ".log") else f"sqlite:///{path.resolve()}"
    raise FileNotFoundError(f"no such directory, database or storage URL: {text}")


def runs_from_storage(target: str | Path) -> list[Run]:
    """Every study in a storage: a directory with bench.journal, bench.db or study.db; a journal or SQLite
    file; a storage URL."""
    url = _storage_url(target)
    storage = open_storage(url)
    runs: list[Run] = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        study_id = storage.get_study_id_from_name(summary.study_name)
        trials = [t for t in storage.get_all_trials(study_id, deepcopy=False) if t.state.is_finished()]
        records = [_record(t) for t in sorted(trials, key=lambda t: t.number)]
        seed = attrs.get(STUDY_SEED)
        runs.append(Run(
            name=summary.study_name,
            method=str(attrs.get(STUDY_METHOD) or summary.study_name),
            seed=int(seed) if seed is not None else len(runs),
            task=str(attrs.get(STUDY_TASK, "")),
            budget_s=attrs.get(STUDY_BUDGET),
            trials=records,
            seconds=attrs.get(SECONDS_ATTR),
            instrument=_instrument(attrs.get(INSTRUMENT_ATTR)),
            noise={k.split(":", 1)[1]: attrs[k] for k in (AGENT_NOISE_ATTR, AGENT_MARGIN_ATTR, AGENT_RULE_ATTR,
                                                           AGENT_NOISE_PAIRS_ATTR) if k in attrs},
        ))
    if not runs:
        raise ReportInputError(f"no studies in {url}")
    return runs


def _instrument(data: Any) -> Instrument | None:
    if not isinstance(data, dict):
        return None
    from centaur.surrogate.instrument import Instrument

    try:
        return Instrument.from_dict(data)
    except ValueError:  # written by another version: the report goes on without it
        return None


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    ok = is_success(t)
    return TrialRecord(
        number=t.number,
        status=status_of(t),
        value=float(t.value) if ok else None,
        cost_s=cost_of(t),
        noise_free=_finite(t.user_attrs.get("noise_free")),
        distance=_finite(t.user_attrs.get("distance_to_data")),
        epistemic_sd=_finite(t.user_attrs.get("epistemic_sd")),
        llm_calls=int(t.user_attrs.get("llm_calls", 0)),
        llm_seconds=float(t.user_attrs.get("llm_seconds", 0.0)),
        source=str(t.user_attrs.get(SOURCE_ATTR, "")),
        config_key=_config_key(t.user_attrs.get(CONFIG_ATTR) or t.params),
        llm_share=_finite(t.user_attrs.get(SHARE_ATTR)),
        verified=t.user_attrs.get(VERIFIED_ATTR),
        decision=t.user_attrs.get(AGENT_DECISION_ATTR),
        improvement=_finite(t.user_attrs.get(AGENT_IMPROVEMENT_ATTR)),
        margin=_finite(t.user_attrs.get(AGENT_MARGIN_TRIAL_ATTR)),
    )


def _config_key(config: object) -> str | None:
    if not isinstance(config, dict) or not config:
        return None
    return json.dumps({k: _canonical(v) for k, v in sorted(config.items())}, default=str)


def _canonical(v: object) -> object:
    """Numbers compared by value (an integer stored as 64.0 is the same configuration as 64)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    f = float(v)
    return int(f) if math.isfinite(f) and f.is_integer() else float(f"{f:.12g}")


def runs_from_trials_file(path: str | Path, budget_s: float = REFERENCE_BUDGET_S) -> list[Run]:
    """The reference study's own trials (`{method: {seed: [trial, ...]}}`), cut at its 24 h budget.

    The file does not say why a trial failed (almost always CUDA OOM); failures are classed "failed".
    """
    from centaur.surrogate.data import HP_NAMES, load_trials

    df = load_trials(path)
    runs: list[Run] = []
    for (method, seed), g in df.groupby(["method", "seed"], sort=True):
        g = g.sort_values("tid")
        records = [
            TrialRecord(number=int(r.tid), status="ok" if r.success else "failed",
                        value=float(r.val_bpb) if r.success else None, cost_s=float(r.wt),
                        config_key=_config_key({h: getattr(r, h) for h in HP_NAMES}))
            for r in g.itertuples()
        ]
        runs.append(Run(name=f"{method} seed {seed}", method=str(method), seed=int(seed),
                        task="reference study", budget_s=budget_s, trials=records, llm_known=False))
    return runs
