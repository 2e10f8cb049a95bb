"""Adaptive trust: the share of LLM turns follows how the LLM's proposals did against CMA-ES's own.

Each LLM turn earns a *credit* in [0, 1] once its trial and some of its CMA-ES generation have finished:
the share of CMA-ES's own samples of the same generation that the LLM's point beat (a tie counts half; a
failed sample is beaten by anything that ran). A failed LLM point earns 0, and so does a turn whose
proposal was vetoed as a predicted out-of-memory point or was unusable (CMA-ES's sample ran instead):
those turns cost LLM time and gave nothing. An LLM that proposes like one more CMA-ES sample earns 0.5
on average.

The share is `base * 2 ** ((m - 0.5) / SCALE)`, clipped to [floor, ceiling], where `m` is the mean credit
of the last WINDOW credited turns shrunk towards 0.5 with PRIOR pseudo-turns: a useless LLM (m near 0)
is asked at the floor, so Centaur tends to its CMA-ES; one that beats most of CMA-ES's samples is asked
at the ceiling. With no evidence yet, the share is `base` (`llm_ratio`).

Which trials are LLM turns: trial n after the warm-up is one when frac(k / phi + offset) < share, with
k = n - warmup (a Weyl sequence: for a constant share the turns are spread evenly and their count is
within a few of share * trials), offset from the seed. Everything is derived from the study's trials on
every call, never from the process's memory, so a resumed study and parallel workers agree (workers up
to the results that have not arrived yet).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import SOURCE_ATTR, STATUS_ATTR, MethodError, trial_seed, typed_option
from centaur.methods.centaur.schedule import LLMSchedule
from centaur.methods.cmaes.sampler import GEN_ATTR
from centaur.methods.failures import is_failure

FLOOR, CEILING = 0.05, 0.5
WINDOW = 30  # credited LLM turns that count: the latest, so the share follows an LLM that improves
PRIOR = 4  # pseudo-turns of credit 0.5
SCALE = 0.15  # credit above 0.5 per doubling of the share
SHARE_ATTR = "llm_share"  # user attribute: the share that decided the trial (after the warm-up)
CREDIT_SOURCES = ("llm", "llm-fallback:predicted-oom", "llm-fallback:cmaes")
GOLDEN = (math.sqrt(5) - 1) / 2


def _score(t: FrozenTrial, minimize: bool) -> float:
    """Lower is better; anything that did not succeed is +inf."""
    if t.state != TrialState.COMPLETE or t.user_attrs.get(STATUS_ATTR, "ok") != "ok" or t.value is None:
        return math.inf
    if not math.isfinite(t.value):
        return math.inf
    return float(t.value) if minimize else -float(t.value)


def credits(trials: Sequence[FrozenTrial], minimize: bool = True) -> list[tuple[int, float]]:
    """(trial number, credit) of every LLM turn that can be credited yet, oldest first."""
    own_by_gen: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        if t.state.is_finished() and t.user_attrs.get(SOURCE_ATTR) == "cmaes" and GEN_ATTR in t.system_attrs:
            own_by_gen[int(t.system_attrs[GEN_ATTR])].append(t)
    out: list[tuple[int, float]] = []
    for t in sorted(trials, key=lambda t: t.number):
        source = t.user_attrs.get(SOURCE_ATTR)
        if source not in CREDIT_SOURCES:
            continue
        if source != "llm":  # vetoed or unusable: known at once
            out.append((t.number, 0.0))
            continue
        if not t.state.is_finished():
            continue
        mine = _score(t, minimize)
        lost = t.state == TrialState.FAIL and not is_failure(t)  # its worker died: it says nothing
        if mine == math.inf and not lost:  # it ran and failed
            out.append((t.number, 0.0))
            continue
        peers = own_by_gen.get(int(t.system_attrs.get(GEN_ATTR, -1)), [])
        if not peers or lost:
            continue
        wins = 0.0
        for p in peers:
            theirs = _score(p, minimize)
            wins += 1.0 if mine < theirs else 0.5 if mine == theirs else 0.0
        out.append((t.number, wins / len(peers)))
    return out


class AdaptiveTrust:
    def __init__(self, base: float, warmup: int, seed: int, floor: float = FLOOR, ceiling: float = CEILING) -> None:
        if not 0.0 <= floor <= ceiling <= 1.0:
            raise ValueError(f"trust_floor and trust_ceiling must satisfy 0 <= floor <= ceiling <= 1, "
                             f"got {floor} and {ceiling}")
        self.floor, self.ceiling = float(floor), float(ceiling)
        self.base = min(max(float(base), self.floor), self.ceiling)
        self.warmup = int(warmup)
        self.offset = trial_seed(seed, 0, "centaur-trust") / 2**32

    def share(self, trials: Sequence[FrozenTrial], minimize: bool = True, before: int | None = None) -> float:
        """The share of LLM turns the evidence in `trials` (those numbered below `before`) supports."""
        scored = [c for n, c in credits(trials, minimize) if before is None or n < before][-WINDOW:]
        m = (sum(scored) + 0.5 * PRIOR) / (len(scored) + PRIOR)
        return min(max(self.base * 2 ** ((m - 0.5) / SCALE), self.floor), self.ceiling)

    def is_llm_turn(self, number: int, share: float) -> bool:
        k = number - self.warmup
        if k < 0:
            return False
        return (k * GOLDEN + self.offset) % 1.0 < share

    def describe(self) -> str:
        return (f"LLM on an adaptive share of trials after the first {self.warmup} (from {self.base:.0%}, "
                f"between {self.floor:.0%} and {self.ceiling:.0%})")


TRUST_MODES = ("adaptive", "fixed")


class TurnPolicy:
    """Which trials are LLM turns: the fixed schedule (`trust=fixed`, or an explicit `llm_trials` list) or
    the adaptive share. `decide` returns (LLM turn?, the adaptive share or None)."""

    def __init__(self, schedule: LLMSchedule, adaptive: AdaptiveTrust | None) -> None:
        self.schedule, self.adaptive = schedule, adaptive

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> tuple[bool, float | None]:
        if self.adaptive is None or self.schedule.trials is not None:
            return self.schedule.is_llm_turn(trial.number), None
        if trial.number < self.adaptive.warmup:
            return False, None
        minimize = len(study.directions) != 1 or study.direction != StudyDirection.MAXIMIZE
        share = self.adaptive.share(study.get_trials(deepcopy=False), minimize)
        return self.adaptive.is_llm_turn(trial.number, share), share

    def describe(self) -> str:
        return self.schedule.describe() if self.adaptive is None else self.adaptive.describe()


def turn_policy(schedule: LLMSchedule, options: dict[str, Any], seed: int) -> TurnPolicy:
    """The policy the method options ask for: `trust` (adaptive|fixed), `trust_floor`, `trust_ceiling`."""
    mode = str(options.get("trust", "adaptive")).strip().lower()
    if mode not in TRUST_MODES:
        raise MethodError(f"centaur: trust must be one of {TRUST_MODES}, not {mode!r} (-o trust=...)")
    if mode == "fixed":
        return TurnPolicy(schedule, None)
    floor = typed_option(options, "trust_floor", float, FLOOR)
    ceiling = typed_option(options, "trust_ceiling", float, CEILING)
    try:
        adaptive = AdaptiveTrust(float(schedule.ratio), schedule.warmup, seed, floor, ceiling)
    except ValueError as e:
        raise MethodError(f"centaur: {e}") from None
    return TurnPolicy(schedule, adaptive)
