"""Per-trial seeding of Optuna samplers, so a resumed study continues its random stream instead of
replaying it from the start (the reference code's Random search repeated its first trials after
every requeue)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import fresh_seed, trial_seed
from centaur.study.optuna_private import LazyRandomState


def _reseed(obj: Any, seed: int, number: int, path: str = "", depth: int = 0) -> None:
    if depth > 3:
        return
    for name, value in list(vars(obj).items()):
        if isinstance(value, LazyRandomState):
            value.rng.seed(trial_seed(seed, number, path + name) % (2**32 - 1))
        elif isinstance(value, BaseSampler):
            _reseed(value, seed, number, f"{path}{name}.", depth + 1)


class _TrialSnapshot:
    """The study as one trial's suggestions see it: every trial read comes from the snapshot Optuna
    caches per trial (taken at the first read after `ask`). TPE with a constant liar otherwise re-reads
    all trials from the storage for each parameter, 14 reads per trial on the reference space."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class PerTrialSeeded(BaseSampler):
    """Wraps an Optuna sampler; before each trial, its random states are seeded from (seed, trial number).
    `reseed_rng()` moves it to a fresh seed, so later trials draw differently."""

    def __init__(self, inner: BaseSampler, seed: int, name: str) -> None:
        self.inner = inner
        self.seed = seed
        self.name = name
        self.draw_seed = seed  # the seed trials are drawn from: the user's until reseed_rng()

    def __repr__(self) -> str:
        return f"{self.name}(seed={self.seed})"

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(_TrialSnapshot(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        _reseed(self.inner, self.draw_seed, trial.number)
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.draw_seed = fresh_seed(self.draw_seed)
        self.inner.reseed_rng()
