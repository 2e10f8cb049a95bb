"""What the peer samplers share: an ask/tell library behind Optuna's sampler interface, on a fixed space.

The study is the source of truth. A peer learns from its finished trials (COMPLETE and PRUNED) that
have every parameter of its space with a value inside it, whoever proposed them: the baseline,
enqueued points, other workers, and after a resume everything that ran before. A failure is told as
its method declared (centaur.methods.failures): "worst" by default, the value of the worst success so
far; "penalty" gives the reference protocol, the study's penalty. A pruned trial is told its last
reported value. Multi-objective studies are refused at the first call; parameters outside the space
(conditional ones) are sampled at random, seeded by (seed, trial number).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import (
    MethodError,
    fresh_seed,
    minimising_sign,
    require_single_objective,
    seeded_random_value,
)
from centaur.methods.failures import is_failure, is_success
from centaur.space import SearchSpace
from centaur.study import optuna_private as op

ORIGIN_ATTR_SUFFIX = ":origin"  # trial system attribute "<method>:origin": how the peer proposed it
PEER_FORMS = ("worst", "penalty")  # no peer library models a constraint apart from the value


@dataclass(frozen=True)
class Observation:
    number: int
    params: dict[str, Any]  # Optuna parameter values, one per parameter of the space
    loss: float  # minimised: a maximised study's values are negated
    failed: bool


class AskTellSampler(BaseSampler):
    """Base of the peers: subclasses implement `_propose(study, trial, observations)`."""

    name = "peer"

    def __init__(self, space: SearchSpace, seed: int = 0, *, failures: str = "worst") -> None:
        if len(space) == 0:
            raise MethodError(f"{self.name} needs at least one parameter to tune")
        if failures not in PEER_FORMS:
            raise MethodError(f"{self.name} option failures must be one of {', '.join(PEER_FORMS)}, got {failures!r}")
        self.space, self.seed, self.failures = space, int(seed), failures
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"{self.name}(seed={self.seed})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- the study as observations -----------------------------------------------------------------
    def observations(self, study: optuna.Study) -> list[Observation]:
        """Every finished trial of the study this peer can learn from, in trial order, failures told in
        the declared form."""
        sign = minimising_sign(study)
        distributions = self.space.distributions()
        finished = sorted(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.number
        )
        losses = [sign * t.values[0] for t in finished if is_success(t)]
        worst = max(losses) if losses else None
        out = []
        for t in finished:
            params = {k: t.params.get(k) for k in distributions}
            if any(k not in t.params or not op.distribution_contains(d, t.params[k]) for k, d in distributions.items()):
                continue  # a conditional parameter it did not suggest, or a value from another space
            loss = _told_loss(t, sign, worst, self.failures)
            if loss is not None:
                out.append(Observation(t.number, params, loss, is_failure(t)))
        return out

    # -- Optuna sampler interface ------------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        require_single_objective(study, self.name)
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        require_single_objective(study, self.name)
        if trial.system_attrs.get("fixed_params") or not search_space:
            return {}  # an enqueued point (the baseline, a retry): it runs as given and is learned from after
        with self._lock:
            params, origin = self._propose(study, trial, self.observations(study))
        op.set_trial_system_attr(study, trial, self.name + ORIGIN_ATTR_SUFFIX, origin)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        require_single_objective(study, self.name)
        return seeded_random_value(study, trial, self.seed, param_name, param_distribution)

    def reseed_rng(self) -> None:
        with self._lock:
            self.seed = fresh_seed(self.seed)
            self._reseeded()

    def _reseeded(self) -> None:
        """After a new seed: drop what was built from the old one (a subclass's optimizer)."""

    def _propose(
        self, study: optuna.Study, trial: FrozenTrial, observations: list[Observation]
    ) -> tuple[dict[str, Any], str]:
        """The Optuna parameters of the next configuration, and where it came from (for the trial's record)."""
        raise NotImplementedError

    def origins(self, study: optuna.Study) -> list[str]:
        """The recorded origin of every trial this peer proposed, in trial order."""
        key = self.name + ORIGIN_ATTR_SUFFIX
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        return [str(t.system_attrs[key]) for t in trials if key in t.system_attrs]


def _told_loss(t: FrozenTrial, sign: float, worst: float | None, form: str) -> float | None:
    value = t.values[0] if t.values else None
    if t.state == TrialState.PRUNED:  # its last reported value: stopped for being worse at that step
        return sign * value if value is not None and math.isfinite(value) else worst
    if is_success(t):
        return sign * float(value)  # type: ignore[arg-type]
    if form == "penalty" or worst is None:  # nothing to compare with yet: the recorded penalty
        return sign * value if value is not None and math.isfinite(value) else None
    return worst


def python_value(value: Any) -> Any:
    """numpy scalars -> plain Python values for Optuna's storage."""
    return value.item() if hasattr(value, "item") else value
