"""The CMA-ES half of Centaur, behind one small interface so the backend can be ours (CatCMAwM, which
models the categorical) or Optuna's CmaEsSampler (the reference study's, for ablations)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import optuna
from cmaes import CatCMAwM
from optuna.samplers import CmaEsSampler
from optuna.trial import FrozenTrial

from centaur.methods.base import fresh_seed, seeded_random_value, trial_seed
from centaur.methods.centaur.view import CmaView, build_view
from centaur.methods.cmaes import library
from centaur.methods.cmaes.sampler import CatCmaSampler
from centaur.space import SearchSpace


class CmaBackend(Protocol):
    def fixed(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]: ...
    def propose(self, study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], Any]: ...
    def accept_own(self, study: optuna.Study, trial: FrozenTrial, handle: Any) -> None: ...
    def accept_external(self, study: optuna.Study, trial: FrozenTrial, handle: Any) -> None: ...
    def view(self, study: optuna.Study, handle: Any) -> CmaView | None: ...
    def perturb(self, config: dict[str, Any], handle: Any, rejected: Callable[[dict[str, Any]], bool],
                salt: str = "centaur-perturb", fresh: bool = False) -> dict[str, Any] | None: ...
    def predicted_oom(self, config: dict[str, Any]) -> float | None: ...
    def reseed_rng(self) -> None: ...


def _offset_perturb(cma: CatCmaSampler, config: dict[str, Any], mean: np.ndarray, draws: list[np.ndarray],
                    rejected: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """`config` moved by CMA-ES's own sampled steps (draw - mean): a point of CMA-ES's distribution
    re-centred on `config`. Tries each draw, then doubled steps; None if every result is rejected."""
    if not cma.numeric:
        return None  # categoricals only: no step to take (the categoricals stay as in `config`)
    base = cma.solution_of(config)
    nf = len(cma.floats)
    for scale in (1.0, 2.0, 4.0):
        for draw in draws:
            v = library.raw_sample(base) + scale * (draw - mean)
            x = np.clip(v[:nf], 0.0, 1.0) if nf else None
            z = v[nf:] if cma.ints else None
            candidate = cma.decode(CatCMAwM.Solution(x, z, base.c, v))
            candidate.update({p.name: config[p.name] for p in cma.cats + cma.singles})
            if not rejected(candidate):
                return candidate
    return None


class OurCmaBackend:
    """Our CatCMAwM sampler; LLM points are tagged external and told with their exact values."""

    def __init__(self, cma: CatCmaSampler) -> None:
        self.cma = cma

    def fixed(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.cma.sample_relative(study, trial, self.cma.space.distributions())

    def propose(self, study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], Any]:
        config, sol, opt = self.cma.propose(study, trial)
        return config, (sol, opt, trial.number)

    def accept_own(self, study: optuna.Study, trial: FrozenTrial, handle: Any) -> None:
        self.cma.mark_own(study, trial, handle[0], handle[1].generation)

    def accept_external(self, study: optuna.Study, trial: FrozenTrial, handle: Any) -> None:
        self.cma.mark_external(study, trial, handle[1].generation)

    def view(self, study: optuna.Study, handle: Any) -> CmaView | None:
        opt: CatCMAwM = handle[1]
        if opt.generation == 0:
            return None
        cma = self.cma
        dist = library.distribution(opt)
        cov = dist.cov  # what it samples from: sigma^2 * A C A
        nf = len(cma.floats)
        mean = dist.mean
        categorical, c = {}, None
        if cma.cats and dist.categorical is not None:
            q = dist.categorical
            categorical = {p.name: {ch: float(q[i, j]) for j, ch in enumerate(p.choices)}
                           for i, p in enumerate(cma.cats)}
            c = np.zeros_like(q, dtype=bool)
            for i, p in enumerate(cma.cats):
                c[i, int(np.argmax(q[i, : len(p.choices)]))] = True
        mean_config = cma.decode(CatCMAwM.Solution(np.clip(mean[:nf], 0, 1) if nf else None,
                                                   mean[nf:] if cma.ints else None, c, mean))
        return build_view(params=cma.numeric, mean_unit=mean, cov_unit=cov, sigma=dist.sigma, sigma0=cma.sigma0,
                          generation=opt.generation, from_unit=cma.from_unit, mean_config=mean_config,
                          categorical=categorical)

    def perturb(self, config: dict[str, Any], handle: Any, rejected: Callable[[dict[str, Any]], bool],
                salt: str = "centaur-perturb", fresh: bool = False) -> dict[str, Any] | None:
        """`config` moved by a step drawn from CMA-ES's distribution, seeded by (seed, trial, `salt`): the
        step of CMA-ES's own sample for the trial first, unless `fresh` (then only new draws)."""
        sol, opt, number = handle
        if not self.cma.numeric:
            return None  # categoricals only: no numeric step to move them by
        rng = np.random.RandomState(trial_seed(self.cma.seed, number, salt) % (2**32 - 1))
        with library.drawing_with(opt, rng):
            draws = [] if fresh else [library.raw_sample(sol)]
            draws += [library.raw_sample(opt.ask()) for _ in range(5 if fresh else 4)]
        return _offset_perturb(self.cma, config, library.distribution(opt).mean, draws, rejected)

    def predicted_oom(self, config: dict[str, Any]) -> float | None:
        """P(OOM) of `config` if the failure model (fitted at this trial's proposal) predicts it fails."""
        model = self.cma.failure_model
        return model.predicted_oom(config) if model is not None else None

    def reseed_rng(self) -> None:
        self.cma.reseed_rng()


class OptunaCmaBackend:
    """Optuna's CmaEsSampler with the study's settings (categoricals drawn at random). It reads each
    trial's params at its generation update, so an LLM point is told simply by being the trial's params;
    failures are told with the study's penalty (Optuna's sampler reads the told value)."""

    def __init__(self, space: SearchSpace, seed: int, options: dict[str, Any]) -> None:
        self.space, self.seed = space, seed
        self.sampler = CmaEsSampler(seed=seed, popsize=options.get("popsize"), sigma0=options.get("sigma0"),
                                    warn_independent_sampling=False)
        self.helper = CatCmaSampler(space, seed)  # for the encoding used by `perturb`

    def fixed(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def propose(self, study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], Any]:
        self.sampler._cma_rng.rng.seed(trial_seed(self.seed, trial.number, "cmaes-optuna") % (2**32 - 1))
        inner = self.sampler.infer_relative_search_space(study, trial)
        params = dict(self.sampler.sample_relative(study, trial, inner)) if inner else {}
        for p in self.space:
            if p.key not in params:
                params[p.key] = seeded_random_value(study, trial, self.seed, p.key, p.distribution)
        return self.space.decode(params), None

    def accept_own(self, study: optuna.Study, trial: FrozenTrial, handle: Any) -> None:
        pass

    def accept_external(self, study: optuna.Study, trial: FrozenTrial, handle: Any) -> None:
        pass

    def view(self, study: optuna.Study, handle: Any) -> CmaView | None:
        return None  # Optuna keeps its optimizer private; this backend runs with the history only

    def perturb(self, config: dict[str, Any], handle: Any, rejected: Callable[[dict[str, Any]], bool],
                salt: str = "centaur-perturb", fresh: bool = False) -> dict[str, Any] | None:
        salt = ("" if salt == "centaur-perturb" else salt) + json.dumps(config, sort_keys=True, default=str)
        rng = np.random.RandomState(trial_seed(self.seed, 0, salt) % (2**32 - 1))
        mean = np.zeros(len(self.helper.numeric))
        draws = [rng.normal(0.0, 1 / 6, len(mean)) for _ in range(5)]
        return _offset_perturb(self.helper, config, mean, draws, rejected)

    def predicted_oom(self, config: dict[str, Any]) -> float | None:
        return None  # the reference's backend, for ablations: no failure model

    def reseed_rng(self) -> None:
        self.seed = fresh_seed(self.seed)
        self.helper.reseed_rng()
