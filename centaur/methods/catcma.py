"""`cmaes`: CMA-ES on the `cmaes` library's CatCMAwM, so integers, powers of two and categoricals
(WINDOW_PATTERN) are modelled, not drawn at random. Its state is stored in the study, so a resumed
or joined run continues from the last generation.

Encoding: floats go to [0, 1] (after log where the parameter is log-scale); integers and pow2
exponents are discrete values in [0, 1]; categoricals are one-hot. Trials whose parameters were fixed
(the baseline, enqueued or LLM-proposed points) are told to CMA-ES with exactly those values.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import optuna
from cmaes import CatCMAwM
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import MethodContext, MethodError, register, trial_seed
from centaur.space import Param, SearchSpace

STATE_ATTR = "catcma:state"
GEN_ATTR = "catcma:generation"
V_ATTR = "catcma:v"


class CatCmaSampler(BaseSampler):
    def __init__(
        self, space: SearchSpace, seed: int = 0, popsize: int | None = None, sigma0: float | None = None
    ) -> None:
        self.space, self.seed, self.popsize, self.sigma0 = space, seed, popsize, sigma0
        self.name = "cmaes"
        self.floats = [p for p in space if p.kind == "float"]
        self.ints = [p for p in space if p.kind in ("int", "pow2")]
        self.cats = [p for p in space if p.kind == "categorical" and len(p.choices) > 1]
        self.singles = [p for p in space if p.kind == "categorical" and len(p.choices) == 1]
        if not (self.floats or self.ints):
            raise MethodError("cmaes needs at least one numeric parameter")

    # -- encoding --------------------------------------------------------------------------------
    @staticmethod
    def _unit(p: Param, value: float) -> float:
        lo, hi, v = float(p.low), float(p.high), float(value)
        if p.kind == "pow2":
            lo, hi, v = math.log2(lo), math.log2(hi), math.log2(v)
        elif p.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    def _z_values(self, p: Param) -> list[float]:
        if p.kind == "pow2":
            values = p.values
        else:
            values = list(range(int(p.low), int(p.high) + 1))
        return [self._unit(p, v) for v in values]

    def _new_optimizer(self, centre: dict[str, Any] | None = None) -> CatCMAwM:
        x_space = [[0.0, 1.0]] * len(self.floats) or None
        z_space = [self._z_values(p) for p in self.ints] or None
        c_space = [len(p.choices) for p in self.cats] or None
        centre = centre or self.space.defaults()
        mean = np.array([self._unit(p, centre[p.name]) for p in self.floats + self.ints])
        return CatCMAwM(
            x_space=x_space,
            z_space=z_space,
            c_space=c_space,
            population_size=self.popsize,
            mean=mean,
            sigma=self.sigma0 or 0.3,
            seed=self.seed,
        )

    def _decode(self, sol: CatCMAwM.Solution) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for p, u in zip(self.floats, sol.x if sol.x is not None else [], strict=False):
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (float(p.low), float(p.high))
            v = lo + float(u) * (hi - lo)
            config[p.name] = min(max(math.exp(v) if p.log else v, p.low), p.high)
        for p, u in zip(self.ints, sol.z if sol.z is not None else [], strict=False):
            values = p.values if p.kind == "pow2" else list(range(int(p.low), int(p.high) + 1))
            units = self._z_values(p)
            config[p.name] = values[int(np.argmin([abs(float(u) - w) for w in units]))]
        for p, onehot in zip(self.cats, sol.c if sol.c is not None else [], strict=False):
            config[p.name] = p.choices[int(np.argmax(onehot[: len(p.choices)]))]
        for p in self.singles:
            config[p.name] = p.choices[0]
        return config

    def _solution_of(self, config: dict[str, Any], opt: CatCMAwM) -> CatCMAwM.Solution:
        x = np.array([self._unit(p, config[p.name]) for p in self.floats]) if self.floats else None
        z = np.array([self._unit(p, config[p.name]) for p in self.ints]) if self.ints else None
        v = np.concatenate([a for a in (x, z) if a is not None])
        c = None
        if self.cats:
            width = max(len(p.choices) for p in self.cats)
            c = np.zeros((len(self.cats), width), dtype=bool)
            for i, p in enumerate(self.cats):
                c[i, p.choices.index(config[p.name])] = True
        return CatCMAwM.Solution(x, z, c, v)

    # -- state in the study ----------------------------------------------------------------------
    def _load(self, study: optuna.Study) -> CatCMAwM:
        blob = study._storage.get_study_system_attrs(study._study_id).get(STATE_ATTR)
        return pickle.loads(bytes.fromhex(blob)) if blob else self._new_optimizer()

    def _save(self, study: optuna.Study, opt: CatCMAwM) -> None:
        study._storage.set_study_system_attr(study._study_id, STATE_ATTR, pickle.dumps(opt).hex())

    def _update(self, study: optuna.Study, opt: CatCMAwM) -> CatCMAwM:
        """Tell every full generation of finished trials that the stored optimizer has not seen."""
        while True:
            members = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.system_attrs.get(GEN_ATTR) == opt.generation and t.value is not None
            ]
            if len(members) < opt.population_size:
                return opt
            members = sorted(members, key=lambda t: t.number)[: opt.population_size]
            solutions = []
            for t in members:
                sol = self._solution_of(self.space.decode(t.params), opt)
                if V_ATTR in t.system_attrs:  # CMA's own sample: keep its raw (unrepaired) vector
                    sol = CatCMAwM.Solution(sol.x, sol.z, sol.c, np.array(t.system_attrs[V_ATTR]))
                solutions.append((sol, float(t.value)))
            try:
                opt.tell(solutions)
            except (np.linalg.LinAlgError, ValueError, FloatingPointError, AssertionError):
                # A degenerate covariance: restart around the best point so far, keeping the
                # generation count so trial tags stay unambiguous.
                best = min(solutions, key=lambda s: s[1])[0]
                generation = opt.generation + 1
                opt = self._new_optimizer(self._decode(best))
                opt._g = generation
            self._save(study, opt)

    # -- Optuna sampler interface ----------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        opt = self._update(study, self._load(study))
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, GEN_ATTR, opt.generation)
        if trial.system_attrs.get("fixed_params"):
            return {}  # an enqueued point: it runs as given and is told to CMA-ES as such
        opt._rng = np.random.RandomState(trial_seed(self.seed, trial.number, "catcma") % (2**32 - 1))
        sol = opt.ask()
        storage.set_trial_system_attr(trial._trial_id, V_ATTR, [float(v) for v in sol._v_raw])
        return self.space.encode(self._decode(sol))

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        # Points that bypassed sample_relative (the enqueued baseline) join the current generation.
        if GEN_ATTR not in trial.system_attrs and state == TrialState.COMPLETE:
            study._storage.set_trial_system_attr(trial._trial_id, GEN_ATTR, self._load(study).generation)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        rng_sampler = RandomSampler(seed=trial_seed(self.seed, trial.number, param_name) % (2**32 - 1))
        return rng_sampler.sample_independent(study, trial, param_name, param_distribution)


@register(
    "cmaes", "CMA-ES (cmaes CatCMAwM): models floats, integers, powers of two and categoricals; state in the study"
)
def catcma_sampler(ctx: MethodContext) -> BaseSampler:
    unknown = set(ctx.options) - {"popsize", "sigma0"}
    if unknown:
        raise MethodError(f"unknown option(s) {sorted(unknown)} for cmaes; it takes popsize, sigma0")
    return CatCmaSampler(ctx.space, ctx.seed, ctx.options.get("popsize"), ctx.options.get("sigma0"))
