"""`cmaes`: CMA-ES on the `cmaes` library's CatCMAwM, so integers, powers of two and categoricals
(WINDOW_PATTERN) are modelled, not drawn at random. Its state is stored in the study, so a resumed
or joined run continues from the last generation.

Encoding: floats go to [0, 1] (after log where the parameter is log-scale); integers and pow2
exponents are discrete values in [0, 1]; categoricals are one-hot. The search starts like the reference
study's CMA-ES (centre of the box, isotropic step 1/6 of the range), unless options say otherwise.
Trials whose parameters did not come from CMA-ES's own sample (the baseline, enqueued points, points
proposed by an LLM in Centaur) are told to CMA-ES with exactly the values that ran.

Pruned trials (Optuna PRUNED, status "pruned") are members of their generation like any finished
trial, ranked as failures are: behind the generation's worst success (a pruner stopped them because
they were worse than the others at the same step), but ahead of every real failure (they ran), and
among themselves the later-pruned first, then by their last reported value. They count as feasible
for the out-of-memory model and for the failures' distance ranking.
"""

from __future__ import annotations

import math
import pickle
import threading
from typing import Any

import numpy as np
import optuna
from cmaes import CatCMAwM
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import (
    STATUS_ATTR,
    MethodContext,
    MethodError,
    fresh_seed,
    minimising_sign,
    option_flag,
    register,
    reject_unknown_options,
    require_single_objective,
    seeded_random_value,
    trial_seed,
    typed_option,
)
from centaur.methods.cmaes import library
from centaur.methods.cmaes.feasibility import THRESHOLD, FailureModel
from centaur.space import Param, SearchSpace
from centaur.study import optuna_private as op
from centaur.study.optuna_private import set_trial_attrs

STATE_ATTR = "catcma:state"
GEN_ATTR = "catcma:generation"
V_ATTR = "catcma:v"  # CMA-ES's raw (unrepaired) sample for its own points
EXTERNAL_ATTR = "catcma:external"  # set on points proposed by someone else (Centaur's LLM turns)
SPACE_ATTR = "catcma:space"  # the space tag of the optimizer that tagged the trial (tagged samplers only)
DEFAULT_SIGMA0 = 1 / 6
FAILURE_POLICIES = ("worst", "skip", "penalty")
RESAMPLES = 20  # draws per trial at most when avoiding predicted out-of-memory points


class CatCmaSampler(BaseSampler):
    """CMA-ES over the whole space. Failures rank behind every success of their generation.
    `external_failures` says how a failed external point (an LLM's) is told: "worst" like CMA-ES's own
    failures (behind the worst success: it cannot pull the mean), "skip" not at all, "penalty" with the
    study's penalty value (as the reference did). With `avoid_oom`, a draw that a classifier fitted on
    the study's trials predicts to run out of memory is drawn again (feasibility.py).

    The study's direction is read: a maximised study's values are negated before CMA-ES ranks them.
    Trials without every parameter of the space (conditional ones) are not told. With a `space_tag`
    (centaur.samplers, one optimizer per inferred space in one study), the state is stored under a key
    of its own, a trial tagged by another space's optimizer, or by none, joins the current generation as
    an external point, and a trial whose values lie outside this space is not told."""

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        popsize: int | None = None,
        sigma0: float | None = None,
        start: str = "centre",
        external_failures: str = "worst",
        avoid_oom: bool = True,
        space_tag: str = "",
    ) -> None:
        if start not in ("centre", "defaults"):
            raise MethodError(f"cmaes: start must be 'centre' or 'defaults', not {start!r}")
        if external_failures not in FAILURE_POLICIES:
            raise MethodError(f"cmaes: failure policy must be one of {FAILURE_POLICIES}, not {external_failures!r}")
        if sigma0 is not None and not 0 < float(sigma0) <= 1:
            raise MethodError(f"cmaes: sigma0 is a fraction of each range, in (0, 1]; got {sigma0}")
        self.space, self.seed, self.popsize = space, seed, popsize
        self.sigma0 = float(sigma0) if sigma0 is not None else DEFAULT_SIGMA0
        self.start, self.external_failures = start, external_failures
        self.failure_model = FailureModel(self.features) if avoid_oom else None
        self.name = "cmaes"
        self.space_tag = space_tag
        self.state_attr = f"{STATE_ATTR}:{space_tag}" if space_tag else STATE_ATTR
        self._lock = threading.RLock()
        self.floats = [p for p in space if p.kind == "float"]
        self.ints = [p for p in space if p.kind in ("int", "pow2")]
        self.cats = [p for p in space if p.kind == "categorical" and len(p.choices) > 1]
        self.singles = [p for p in space if p.kind == "categorical" and len(p.choices) == 1]
        if not (self.floats or self.ints or self.cats):
            raise MethodError("cmaes needs at least one parameter to tune")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)  # the state that matters lives in the study
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- encoding --------------------------------------------------------------------------------
    @staticmethod
    def unit(p: Param, value: float) -> float:
        """A numeric value on CMA-ES's [0, 1] scale (log where the parameter is log-scale or pow2)."""
        lo, hi, v = float(p.low), float(p.high), float(value)
        if p.kind == "pow2":
            lo, hi, v = math.log2(lo), math.log2(hi), math.log2(v)
        elif p.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    @staticmethod
    def from_unit(p: Param, u: float) -> float:
        """The inverse of `unit`, unrounded (for showing CMA-ES's state in real units)."""
        lo, hi = float(p.low), float(p.high)
        if p.kind == "pow2":
            return 2 ** (math.log2(lo) + u * (math.log2(hi) - math.log2(lo)))
        if p.log:
            return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        return lo + u * (hi - lo)

    @property
    def numeric(self) -> list[Param]:
        """Parameters in the order of CMA-ES's Gaussian vector."""
        return self.floats + self.ints

    def _z_values(self, p: Param) -> list[float]:
        values = p.values if p.kind == "pow2" else list(range(int(p.low), int(p.high) + 1))
        return [self.unit(p, v) for v in values]

    def new_optimizer(self, centre: dict[str, Any] | None = None, sigma: float | None = None) -> CatCMAwM:
        x_space = [[0.0, 1.0]] * len(self.floats) or None
        z_space = [self._z_values(p) for p in self.ints] or None
        c_space = [len(p.choices) for p in self.cats] or None
        if centre is None and self.start == "defaults":
            centre = self.space.defaults()
        mean = (
            np.array([self.unit(p, centre[p.name]) for p in self.numeric])
            if centre is not None
            else np.full(len(self.numeric), 0.5)
        )
        opt = CatCMAwM(
            x_space=x_space,
            z_space=z_space,
            c_space=c_space,
            population_size=self.popsize,
            mean=mean,
            sigma=sigma or self.sigma0,
            cov=np.eye(len(self.numeric)),  # isotropic in the unit box, as the study's CMA-ES
            seed=self.seed,
        )
        library.set_told(opt, set())
        return opt

    def decode(self, sol: CatCMAwM.Solution) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for p, u in zip(self.floats, sol.x if sol.x is not None else [], strict=False):
            config[p.name] = min(max(self.from_unit(p, float(u)), p.low), p.high)
        for p, u in zip(self.ints, sol.z if sol.z is not None else [], strict=False):
            values = p.values if p.kind == "pow2" else list(range(int(p.low), int(p.high) + 1))
            units = self._z_values(p)
            config[p.name] = values[int(np.argmin([abs(float(u) - w) for w in units]))]
        for p, onehot in zip(self.cats, sol.c if sol.c is not None else [], strict=False):
            config[p.name] = p.choices[int(np.argmax(onehot[: len(p.choices)]))]
        for p in self.singles:
            config[p.name] = p.choices[0]
        return config

    def solution_of(self, config: dict[str, Any]) -> CatCMAwM.Solution:
        x = np.array([self.unit(p, config[p.name]) for p in self.floats]) if self.floats else None
        z = np.array([self.unit(p, config[p.name]) for p in self.ints]) if self.ints else None
        v = np.concatenate([a for a in (x, z) if a is not None]) if self.numeric else None  # None: categoricals only
        c = None
        if self.cats:
            width = max(len(p.choices) for p in self.cats)
            c = np.zeros((len(self.cats), width), dtype=bool)
            for i, p in enumerate(self.cats):
                c[i, p.choices.index(config[p.name])] = True
        return CatCMAwM.Solution(x, z, c, v)

    # -- state in the study ----------------------------------------------------------------------
    def _load(self, study: optuna.Study) -> CatCMAwM:
        blob = op.study_system_attrs(study).get(self.state_attr)
        opt = pickle.loads(bytes.fromhex(blob)) if blob else self.new_optimizer()
        library.set_told(opt, library.told(opt))  # the trial numbers told travel with the pickled optimizer
        return opt

    def _save(self, study: optuna.Study, opt: CatCMAwM) -> None:
        op.set_study_system_attr(study, self.state_attr, pickle.dumps(opt).hex())

    def state(self, study: optuna.Study, completed: list[FrozenTrial] | None = None) -> CatCMAwM:
        """The optimizer, updated with every complete generation of finished trials (`completed`: the
        study's finished trials, when the caller has read them already)."""
        return self._update(study, self._load(study), completed)

    @staticmethod
    def _completed(study: optuna.Study) -> list[FrozenTrial]:
        """The finished trials CMA-ES is told: complete ones and pruned ones (lost ones never ran)."""
        return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))

    def _members(self, study: optuna.Study, opt: CatCMAwM,
                 completed: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
        """Finished trials not yet told, asked at this generation or earlier: a result that came in after
        its own generation was updated (parallel workers, out of order) joins the next one, as an
        injected point, instead of being dropped."""
        told = library.told(opt)
        members = [
            t
            for t in (completed if completed is not None else self._completed(study))
            if self._generation_of(t, opt) <= opt.generation
            and t.number not in told
            and (t.value is not None or t.state == TrialState.PRUNED)
            and self.ran_in_space(t)
        ]
        if self.external_failures == "skip":
            members = [t for t in members if not (t.system_attrs.get(EXTERNAL_ATTR) and _failed(t))]
        return sorted(members, key=lambda t: t.number)

    def _generation_of(self, t: FrozenTrial, opt: CatCMAwM) -> int:
        """The generation a finished trial belongs to. Untagged trials wait (`centaur tune` tags every
        trial); a tagged sampler takes untagged trials and other spaces' trials into its current one."""
        if not self.space_tag:
            return int(t.system_attrs.get(GEN_ATTR, opt.generation + 1))
        if t.system_attrs.get(SPACE_ATTR) != self.space_tag or GEN_ATTR not in t.system_attrs:
            return opt.generation
        return int(t.system_attrs[GEN_ATTR])

    def _own_tag(self, t: FrozenTrial) -> bool:
        return not self.space_tag or t.system_attrs.get(SPACE_ATTR) == self.space_tag

    def ran_in_space(self, t: FrozenTrial) -> bool:
        """Whether the trial has every parameter of the space (with a space tag: every value inside it)."""
        if not all(p.key in t.params for p in self.space):
            return False
        return not self.space_tag or all(p.contains(p.decode(t.params[p.key])) for p in self.space)

    def _values(self, members: list[FrozenTrial], feasible: list[np.ndarray] | None = None,
                sign: float = 1.0) -> list[float]:
        """The values CMA-ES ranks. A failure is placed just behind the generation's worst success
        instead of at the penalty: ranks are the same, but a penalty of 100 would blow up the
        interquartile range CatCMAwM scales its boundary penalties with, and then every clipped sample
        would rank below an out-of-memory one. Failed external points follow `external_failures`.

        Failures rank among themselves by their distance to the nearest configuration that ran
        (`feasible`, numeric coordinates on CMA-ES's scale): a generation that failed entirely (a start
        in an out-of-memory region) still moves the search towards where trials succeed.

        Pruned trials rank just behind the worst success and ahead of every failure: the later a trial
        was pruned the better, then the lower its last reported value.

        `sign` is -1 for a maximised study: every value is negated, so CMA-ES always minimises."""
        ok = [sign * float(t.value) for t in members if not _failed(t)]  # type: ignore[arg-type]
        failures = [sign * float(t.value) for t in members if _failed(t) and not _pruned(t) and t.value is not None]
        worst = max(ok) if ok else max(failures, default=0.0)
        by_progress = sorted((t for t in members if _pruned(t)), key=lambda t: _pruned_rank(t, sign))
        pruned_rank = {t.number: r for r, t in enumerate(by_progress)}
        values = []
        for i, t in enumerate(members):
            if _pruned(t):
                values.append(worst + 1e-9 * (pruned_rank[t.number] + 1))
            elif not _failed(t) or (self.external_failures == "penalty" and t.system_attrs.get(EXTERNAL_ATTR)):
                values.append(sign * float(t.value))  # type: ignore[arg-type]
            else:
                d = self._distance(t, feasible) if feasible else 0.0
                behind = 1e-6 if by_progress else 0.0  # behind the pruned ones (unchanged without any)
                values.append(worst + behind + 1e-6 * d + 1e-12 * (i + 1))
        return values

    def coords(self, config: dict[str, Any]) -> np.ndarray:
        """The numeric parameters of `config` on CMA-ES's [0, 1] scale."""
        return np.array([self.unit(p, config[p.name]) for p in self.numeric])

    def features(self, config: dict[str, Any]) -> np.ndarray:
        """`coords` plus the categoricals one-hot: what the failure model sees."""
        onehot = [float(config[p.name] == c) for p in self.cats for c in p.choices]
        return np.concatenate([self.coords(config), onehot])

    def _distance(self, t: FrozenTrial, feasible: list[np.ndarray]) -> float:
        x = self.coords(self.space.decode(t.params))
        return float(min(np.linalg.norm(x - f) for f in feasible))

    def _feasible(self, completed: list[FrozenTrial]) -> list[np.ndarray]:
        return [
            self.coords(self.space.decode(t.params))
            for t in completed
            if (not _failed(t) or _pruned(t)) and all(p.key in t.params for p in self.space)
        ]

    def _update(self, study: optuna.Study, opt: CatCMAwM, completed: list[FrozenTrial] | None = None) -> CatCMAwM:
        """Tell every full generation of finished trials that the stored optimizer has not seen."""
        if completed is None:
            completed = self._completed(study)  # read once for every generation told here
        while True:
            members = self._members(study, opt, completed)
            if len(members) < opt.population_size:
                return opt
            members = members[: opt.population_size]  # any extra ones wait for the next generation
            told = library.told(opt) | {t.number for t in members}
            solutions = []
            feasible = self._feasible(completed) if any(_failed(t) for t in members) else None
            values = self._values(members, feasible, minimising_sign(study))
            for t, value in zip(members, values, strict=True):
                sol = self.solution_of(self.space.decode(t.params))
                raw = t.system_attrs.get(V_ATTR)
                own_current = (not t.system_attrs.get(EXTERNAL_ATTR) and t.system_attrs.get(GEN_ATTR) == opt.generation
                               and self._own_tag(t))
                if raw is not None and own_current and self.numeric:
                    sol = CatCMAwM.Solution(sol.x, sol.z, sol.c, np.array(raw))  # CMA's own, unrepaired sample
                solutions.append((sol, value))
            try:
                opt.tell(solutions)
            except (np.linalg.LinAlgError, ValueError, FloatingPointError, AssertionError):
                # A degenerate covariance: restart around the best point so far, keeping the
                # generation count so trial tags stay unambiguous.
                best = min(solutions, key=lambda s: s[1])[0]
                generation = opt.generation + 1
                opt = self.new_optimizer(self.decode(best))
                library.set_generation(opt, generation)
            library.set_told(opt, told)
            self._save(study, opt)

    # -- asking, in two steps so Centaur can replace CMA-ES's proposal ---------------------------
    def propose(self, study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], CatCMAwM.Solution, CatCMAwM]:
        """Draw CMA-ES's own sample for the trial (seeded by the trial number, so a resume does not replay
        earlier draws). Nothing is written: `mark_own` or `mark_external` tags the trial with the
        returned optimizer's generation once the caller knows which point runs."""
        completed = self._completed(study)  # one read serves the update and the failure model
        opt = self.state(study, completed)
        library.reseed(opt, trial_seed(self.seed, trial.number, "catcma") % (2**32 - 1))
        sol = opt.ask()
        # Only predicted OOMs are drawn again. Redrawing the configurations the space's constraints forbid
        # too was measured worse on the surrogate (10 seeds: 0.9798 +- 0.0029 against 0.9775 +- 0.0016):
        # rejected points teach CMA-ES nothing, while told as failures they move it off the boundary.
        model = self.fit_failure_model(completed) if self.failure_model is not None else None
        if model is not None and model.ready:
            sol = self._feasible_draw(opt, sol, model)
        return self.decode(sol), sol, opt

    def fit_failure_model(self, completed: list[FrozenTrial]) -> FailureModel:
        assert self.failure_model is not None
        keys = {p.key for p in self.space}
        trials = [t for t in completed if keys <= t.params.keys()]
        statuses = ["ok" if _pruned(t) else t.user_attrs.get(STATUS_ATTR, "ok") for t in trials]  # pruned: it ran
        return self.failure_model.fit_trials([t.params for t in trials], statuses, self.space.decode)

    def _feasible_draw(self, opt: CatCMAwM, first: CatCMAwM.Solution, model: FailureModel) -> CatCMAwM.Solution:
        """The first of up to RESAMPLES draws that is not predicted to run out of memory (rejection
        sampling from CMA-ES's own distribution), or the least likely to fail if none is. The others are
        drawn only when the first is rejected: the usual case costs one prediction, not RESAMPLES."""
        p_first = model.p_oom([self.decode(first)])
        if p_first[0] < THRESHOLD:
            return first
        draws = [first] + [opt.ask() for _ in range(RESAMPLES - 1)]
        p = np.concatenate([p_first, model.p_oom([self.decode(d) for d in draws[1:]])])
        ok = np.flatnonzero(p < THRESHOLD)
        return draws[int(ok[0]) if ok.size else int(np.argmin(p))]

    # The generation tag and what was run, in one write (one transaction on an RDB storage).
    def _tags(self, generation: int) -> dict[str, Any]:
        return {GEN_ATTR: generation, **({SPACE_ATTR: self.space_tag} if self.space_tag else {})}

    def mark_own(self, study: optuna.Study, trial: FrozenTrial, sol: CatCMAwM.Solution, generation: int) -> None:
        raw = [float(v) for v in library.raw_sample(sol)] if self.numeric else []
        set_trial_attrs(op.storage_of(study), op.trial_id(trial), system_attrs={**self._tags(generation), V_ATTR: raw})

    def mark_external(self, study: optuna.Study, trial: FrozenTrial, generation: int) -> None:
        attrs = {**self._tags(generation), EXTERNAL_ATTR: True}
        set_trial_attrs(op.storage_of(study), op.trial_id(trial), system_attrs=attrs)

    # -- Optuna sampler interface ----------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        require_single_objective(study, self.name)
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        require_single_objective(study, self.name)
        if not search_space:
            return {}
        with self._lock:  # the state is read, updated and written back: one trial at a time per process
            if trial.system_attrs.get("fixed_params"):
                opt = self.state(study)  # an enqueued point: it runs as given and is told to CMA-ES as such
                set_trial_attrs(op.storage_of(study), op.trial_id(trial), system_attrs=self._tags(opt.generation))
                return {}
            config, sol, opt = self.propose(study, trial)
            self.mark_own(study, trial, sol, opt.generation)
        return {k: v for k, v in self.space.encode(config).items() if k in search_space}

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        # Points that bypassed sample_relative join the current generation (the trial is still writable here).
        if GEN_ATTR not in trial.system_attrs and state in (TrialState.COMPLETE, TrialState.PRUNED):
            with self._lock:
                tags = self._tags(self._load(study).generation)
            set_trial_attrs(op.storage_of(study), op.trial_id(trial), system_attrs=tags)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        require_single_objective(study, self.name)
        return seeded_random_value(study, trial, self.seed, param_name, param_distribution)

    def reseed_rng(self) -> None:
        # Draws are seeded by (seed, trial number); the state in the study is kept, only later draws change.
        with self._lock:
            self.seed = fresh_seed(self.seed)


def _failed(t: FrozenTrial) -> bool:
    return t.user_attrs.get(STATUS_ATTR, "ok") != "ok" or t.state == TrialState.PRUNED


def _pruned(t: FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED or t.user_attrs.get(STATUS_ATTR) == "pruned"


def _pruned_rank(t: FrozenTrial, sign: float = 1.0) -> tuple[float, float, int]:
    """Later-pruned first, then better last value (a pruned trial's value is its last reported one)."""
    step = t.last_step if t.last_step is not None else t.user_attrs.get("pruned_step", -1)
    value = sign * t.value if t.value is not None and math.isfinite(t.value) else math.inf
    return (-float(step), float(value), t.number)


CMAES_OPTIONS = {"popsize", "sigma0", "start", "avoid_oom"}


def catcma_from_options(ctx: MethodContext, options: dict[str, Any], external_failures: str = "worst") -> CatCmaSampler:
    return CatCmaSampler(
        ctx.space,
        ctx.seed,
        popsize=typed_option(options, "popsize", int),
        sigma0=typed_option(options, "sigma0", float),
        start=str(options.get("start", "centre")),
        external_failures=external_failures,
        avoid_oom=option_flag(options.get("avoid_oom", True)),
        space_tag=ctx.space_tag,
    )


@register(
    "cmaes", "CMA-ES (cmaes CatCMAwM): models floats, integers, powers of two and categoricals; state in the study"
)
def catcma_sampler(ctx: MethodContext) -> BaseSampler:
    reject_unknown_options(ctx.options, CMAES_OPTIONS, "cmaes")
    return catcma_from_options(ctx, ctx.options)
