"""Every Centaur method as an Optuna sampler, for a plain Optuna program.

    import optuna
    from centaur.samplers import create

    sampler = create("cmaes", seed=0)  # or "smac", "centaur" (with llm=...), "tpe", ...
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: -(t.suggest_float("x", -5, 5) - 2) ** 2, n_trials=30)

Inside `centaur tune` a method gets the task's `SearchSpace`. Here there is none: the space is inferred
from the distributions the program suggests, the way Optuna's relative samplers do it. The space-bound
methods (cmaes, smac, centaur and the LLM methods) work on the intersection search space of the study's
finished trials (Optuna's `IntersectionSearchSpace`, pruned trials included, single-valued
distributions left out), so a conditional parameter that only some trials suggest, or a parameter whose
range changes, is sampled by `sample_independent` (seeded random, reproducible per trial). The first
trial has no finished trial to infer from and is sampled at random, as with Optuna's CmaEsSampler. One
method instance is built per space it is asked about, and each keeps its state apart (cmaes and centaur
store their optimizer in the study under a key of the space). Optuna's own samplers (random, tpe,
tpe-optuna, gp, cmaes-optuna) already handle dynamic spaces and are used as they are, seeded per trial.
`sample_relative` returns a value for every parameter of the space it is given (categorical-only and
mixed spaces included), and `reseed_rng()` moves every draw to a new seed (docs/samplers.md).

Every sampler reads the study's direction, refuses a multi-objective study at the first call unless the
method supports one (random, tpe, tpe-optuna, gp), is safe under `study.optimize(n_jobs=k)` (one lock serialises
its sampling calls), and removes its temporary files on `close()`, at the end of a `with` block, or when
it is garbage-collected. See docs/samplers.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.base import (
    MethodContext,
    MethodError,
    available_methods,
    create_sampler,
    fresh_seed,
    method_info,
    require_single_objective,
    seeded_random_value,
)
from centaur.space import Param, SearchSpace
from centaur.study import optuna_private as op

__all__ = [
    "CentaurSampler",
    "CmaEsSampler",
    "GpSampler",
    "MULTI_OBJECTIVE",
    "OPTUNA_NATIVE",
    "RandomSampler",
    "Sampler",
    "SmacSampler",
    "TpeSampler",
    "available",
    "create",
    "param_of",
    "space_of",
]

log = logging.getLogger(__name__)

# Optuna's samplers: spaces handled by Optuna
OPTUNA_NATIVE = frozenset({"random", "tpe", "tpe-optuna", "gp", "cmaes-optuna"})
MULTI_OBJECTIVE = frozenset({"random", "tpe", "tpe-optuna", "gp"})  # the methods that support several objectives


# -- Optuna distributions -> our search space ----------------------------------------------------------
def param_of(name: str, distribution: BaseDistribution) -> Param:
    """The `Param` of one Optuna distribution (same name, same range, same scale). A `step` is not part
    of a Param: the sampler snaps its proposals to the grid of the distribution it was asked about."""
    if isinstance(distribution, CategoricalDistribution):
        choices = tuple(distribution.choices)
        return Param(name, "categorical", choices[0], choices=choices, source="optuna")
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        low, high, is_log = distribution.low, distribution.high, distribution.log
        middle = math.sqrt(low * high) if is_log else (low + high) / 2
        kind = "int" if isinstance(distribution, IntDistribution) else "float"
        default = snap(middle, distribution)
        return Param(name, kind, default, low=low, high=high, log=is_log, source="optuna")  # type: ignore[arg-type]
    raise MethodError(f"parameter {name!r}: unsupported distribution {distribution!r}")


def space_of(distributions: dict[str, BaseDistribution]) -> SearchSpace:
    """Our `SearchSpace` of Optuna distributions, in name order."""
    return SearchSpace(tuple(param_of(name, distributions[name]) for name in sorted(distributions)))


def snap(value: Any, distribution: BaseDistribution) -> Any:
    """`value` as a value of `distribution`: clipped to its range, on its step grid, int for ints."""
    if isinstance(distribution, CategoricalDistribution):
        return value
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    low, high, step = distribution.low, distribution.high, distribution.step
    v = min(max(float(value), low), high)
    if step is not None and not (isinstance(distribution, IntDistribution) and step == 1):
        v = min(low + round((v - low) / step) * step, high)
    if isinstance(distribution, IntDistribution):
        return int(round(v))
    return float(v)


def _space_key(distributions: dict[str, BaseDistribution]) -> tuple[tuple[str, str], ...]:
    return tuple((name, repr(distributions[name])) for name in sorted(distributions))


def _tag(key: tuple[tuple[str, str], ...]) -> str:
    return hashlib.blake2b(repr(key).encode(), digest_size=6).hexdigest()


def available() -> dict[str, str]:
    """The methods usable as samplers: name -> one-line summary (`agent-code` runs its own loop)."""
    return {name: summary for name, summary in available_methods().items() if not method_info(name).own_loop}


# -- the sampler -----------------------------------------------------------------------------------------
class Sampler(BaseSampler):
    """One Centaur method behind Optuna's sampler interface, for `optuna.create_study(sampler=...)`.

    Args:
        method: a name from `available()`: "cmaes", "smac", "centaur", "tpe", "gp", "random",
            "cmaes-optuna", "agent-hps", "llambo", "llambo-hub", "centaur-null", and the peers
            "tpe-optuna", "hebo", "ngopt" (hebo and ngopt need their extras).
        seed: seeds every random choice (per trial: a resumed study does not replay its draws).
        options: the method's options, as `-o NAME=VALUE` of `centaur tune` (docs/samplers.md).
        llm: for the LLM methods: an `centaur.llm.LLMClient`, `LLMSettings`, or a dict like the
            `[llm]` table of centaur.toml (base_url, model, ...); None: the environment's settings.
        task_description: what the LLM is told about the problem.
        output_dir: where a method keeps files (SMAC's run history, the LLM call log); None: SMAC
            writes to a temporary folder removed by `close()`, and the LLM calls are not logged.
        penalty: the cost SMAC is told for a trial that finished without a usable value.
    """

    def __init__(
        self,
        method: str,
        *,
        seed: int = 0,
        options: dict[str, Any] | None = None,
        llm: Any = None,
        task_description: str = "",
        output_dir: str | Path | None = None,
        penalty: float = 100.0,
    ) -> None:
        info = method_info(method)
        if info.own_loop:
            raise MethodError(f"{method!r} runs its own loop, not as an Optuna sampler; use one of "
                              f"{sorted(available())}")
        self.method, self.seed = method, int(seed)
        self._draw_seed = self.seed  # what trials are drawn from: the seed, until reseed_rng()
        self.options = dict(options or {})
        self.task_description, self.penalty = task_description, float(penalty)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._llm = self._llm_given = llm
        self._lock = threading.RLock()
        self._native: BaseSampler | None = None
        self._inners: dict[tuple, BaseSampler | None] = {}  # space key -> the method on that space (None: refused)
        self._intersections: dict[int, IntersectionSearchSpace] = {}  # study id -> its intersection space
        self._trial_inner: dict[tuple[int, int], BaseSampler] = {}  # (study id, trial number) -> who sampled it
        if method in OPTUNA_NATIVE:
            self._native = create_sampler(method, self._context(SearchSpace(())))
        else:  # build once on a small space, so a bad option or a missing package fails here, not in trial 1
            probe = create_sampler(method, self._context(space_of({"x": FloatDistribution(0.0, 1.0)})))
            client = getattr(probe, "client", None)
            if client is not None:
                self._llm = client  # one LLM client (and call log) for every space
            _close(probe)

    def __repr__(self) -> str:
        return f"centaur.samplers.Sampler({self.method!r}, seed={self.seed})"

    def _context(self, space: SearchSpace, tag: str = "") -> MethodContext:
        run_dir = self.output_dir / f"space-{tag}" if self.output_dir is not None and tag else self.output_dir
        return MethodContext(space=space, seed=self._draw_seed, options=dict(self.options), llm=self._llm,
                             task_description=self.task_description, penalty=self.penalty, run_dir=run_dir,
                             space_tag=tag)  # fmt: skip

    def _check(self, study: optuna.Study) -> None:
        if self.method not in MULTI_OBJECTIVE:
            require_single_objective(study, f"centaur sampler {self.method!r}")

    def _inner(self, distributions: dict[str, BaseDistribution]) -> BaseSampler | None:
        """The method built on this space (once per space); None where the method refuses the space."""
        key = _space_key(distributions)
        if key not in self._inners:
            try:
                self._inners[key] = create_sampler(self.method, self._context(space_of(distributions), _tag(key)))
            except MethodError as e:  # e.g. cmaes on categoricals only: those parameters are sampled at random
                log.warning("%s cannot model %s (%s); sampling them at random", self.method, sorted(distributions), e)
                self._inners[key] = None
        return self._inners[key]

    # -- Optuna sampler interface ----------------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        self._check(study)
        with self._lock:
            if self._native is not None:
                return self._native.infer_relative_search_space(study, trial)
            space = self._intersection(study)
            return space if space and self._inner(space) is not None else {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """A value for every parameter of `search_space`: the method's where it models them, and where it
        does not (a parameter no finished trial has, a space the method refuses, an exhausted discrete
        space) the value `sample_independent` gives, so a caller never finds a parameter missing."""
        self._check(study)
        with self._lock:
            params = self._relative(study, trial, search_space)
        out = {}
        for name, value in params.items():
            if name in search_space:
                dist = search_space[name]
                value = snap(value, dist)
                if op.distribution_contains(dist, value):
                    out[name] = value
        if trial.system_attrs.get("fixed_params"):
            return out  # an enqueued trial: its own values win over anything drawn here
        for name, dist in search_space.items():
            if name not in out and not dist.single():
                out[name] = self.sample_independent(study, trial, name, dist)
        return out

    def _relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._native is not None:
            # Optuna's samplers learn from trials that have the parameters: what they inferred themselves,
            # or what every finished trial has (Optuna's CmaEsSampler leaves categoricals out of its own
            # inference, yet models them one-hot when it is given them).
            known = {**self._intersection(study), **self._native.infer_relative_search_space(study, trial)}
            search_space = {k: d for k, d in search_space.items() if known.get(k) == d}
            return self._native.sample_relative(study, trial, search_space) if search_space else {}
        search_space = {k: d for k, d in search_space.items() if not d.single()}
        inner = self._inner(search_space) if search_space else None
        if inner is None:
            return {}
        self._trial_inner[(op.study_id(study), trial.number)] = inner
        return inner.sample_relative(study, trial, inner.space.distributions())  # type: ignore[attr-defined]

    def _intersection(self, study: optuna.Study) -> dict[str, BaseDistribution]:
        """The parameters every finished trial has, with one distribution (pruned trials included)."""
        intersection = self._intersections.setdefault(op.study_id(study), IntersectionSearchSpace(include_pruned=True))
        return {k: d for k, d in intersection.calculate(study).items() if not d.single()}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        self._check(study)
        if self._native is not None:
            with self._lock:
                return self._native.sample_independent(study, trial, param_name, param_distribution)
        return seeded_random_value(study, trial, self._draw_seed, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._native is not None:
            with self._lock:
                self._native.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        with self._lock:
            if self._native is not None:
                self._native.after_trial(study, trial, state, values)
                return
            inner = self._trial_inner.pop((op.study_id(study), trial.number), None)
            if inner is not None:
                inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Draw later trials from a fresh seed (Optuna calls this in each thread of `optimize(n_jobs=k)`).
        Every draw is seeded by (seed, trial number), so without a reseed a resumed study with the same
        seed draws what it drew before; the methods' learned state (in the study) is kept."""
        with self._lock:
            self._draw_seed = fresh_seed(self._draw_seed)
            for inner in [self._native, *self._inners.values()]:
                if inner is not None:
                    inner.reseed_rng()

    # -- cleanup and copies --------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the temporary files of the methods built so far (SMAC's); the sampler stays usable."""
        with self._lock:
            for inner in self._inners.values():
                _close(inner)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """A copy rebuilds its methods from the study (their state is there); the LLM setting travels."""
        state = self.__dict__.copy()
        state.update(_lock=None, _inners={}, _trial_inner={}, _llm=self._llm_given)  # not the client
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()


def _close(sampler: Any) -> None:
    close = getattr(sampler, "close", None)
    if callable(close):
        close()


def create(
    method: str,
    *,
    seed: int = 0,
    llm: Any = None,
    task_description: str = "",
    output_dir: str | Path | None = None,
    penalty: float = 100.0,
    **options: Any,
) -> Sampler:
    """The sampler of `method` with its options as keywords, e.g. `create("cmaes", seed=1, popsize=8)`,
    `create("centaur", llm={"base_url": ..., "model": ...}, llm_ratio=0.3)`. See `Sampler`."""
    return Sampler(method, seed=seed, options=options, llm=llm, task_description=task_description,
                   output_dir=output_dir, penalty=penalty)  # fmt: skip


class _Named(Sampler):
    method_name = ""

    def __init__(self, *, seed: int = 0, output_dir: str | Path | None = None, **options: Any) -> None:
        super().__init__(self.method_name, seed=seed, options=options, output_dir=output_dir)


class CmaEsSampler(_Named):
    """Our CMA-ES (CatCMAwM: floats, ints and categoricals modelled). Options: popsize, sigma0, start, avoid_oom."""

    method_name = "cmaes"


class SmacSampler(_Named):
    """SMAC3's HPO facade (random forest, log-EI). Options: n_init, random_ratio, n_trees, n_trials (the trial
    budget, when known: the initial design is at most a quarter of it). Needs centaur-hpo[smac]."""

    method_name = "smac"


class TpeSampler(_Named):
    """Optuna's TPE, seeded per trial, with a constant liar. Options: n_startup_trials, multivariate, ..."""

    method_name = "tpe"


class GpSampler(_Named):
    """Optuna's GPSampler, seeded per trial. Options: n_startup_trials. Needs PyTorch."""

    method_name = "gp"


class RandomSampler(_Named):
    """Random search, seeded per trial."""

    method_name = "random"


class CentaurSampler(Sampler):
    """Centaur: our CMA-ES, with an LLM proposing a share of the trials. `llm` as in `Sampler`;
    options: llm_ratio, llm_warmup, metric, fallback, ... (docs/centaur.md)."""

    def __init__(
        self,
        *,
        llm: Any = None,
        seed: int = 0,
        task_description: str = "",
        output_dir: str | Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__("centaur", seed=seed, options=options, llm=llm, task_description=task_description,
                         output_dir=output_dir)  # fmt: skip
