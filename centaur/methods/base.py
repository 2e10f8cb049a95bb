"""What every method gets, and helpers shared by our samplers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from centaur.methods.failure_view import told_through_view
from centaur.space import SearchSpace
from centaur.study import optuna_private as op
from centaur.study.schema import CONFIG_ATTR, SOURCE_ATTR, STATUS_ATTR  # noqa: F401  (every method reads them)


class MethodError(ValueError):
    """A method cannot be built (unknown name, bad option); the message says what to do."""


@dataclass
class MethodContext:
    """Everything a method factory may need. Factories take what they use and ignore the rest."""

    space: SearchSpace = field(default_factory=lambda: SearchSpace(()))  # empty: a method that needs one refuses
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # method options from CLI/centaur.toml [methods.NAME]
    task_description: str = ""  # for LLM prompts: generated from the task, with the real hardware and cap
    penalty: float = 100.0  # objective value that failed trials were told with
    run_dir: Path | None = None  # where a method may keep logs (LLM call logs ...)
    llm: Any = None  # centaur.llm settings, when the method uses an LLM
    # A suffix for the study attributes a method keeps its state under, when one study holds several
    # spaces (centaur.samplers builds one sampler per inferred space); "" inside `centaur tune`.
    space_tag: str = ""


MethodFactory = Callable[[MethodContext], BaseSampler]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    factory: MethodFactory
    summary: str
    sequential: str | None = None  # why it cannot share a study with other workers (None: it can)
    own_loop: bool = False  # not a sampler: `centaur.tune` runs the method's own loop
    # How failed trials are shown to it (centaur.methods.failures): "penalty", "constraint", "worst", or
    # "own" (it reads each trial's failure class itself).
    failures: str = "own"


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str, summary: str, *, sequential: str | None = None, own_loop: bool = False, failures: str = "own"
) -> Callable[[MethodFactory], MethodFactory]:
    def deco(factory: MethodFactory) -> MethodFactory:
        _REGISTRY[name] = MethodInfo(name, factory, summary, sequential, own_loop, failures)
        return factory

    return deco


def available_methods() -> dict[str, str]:
    _load_builtin_methods()
    return {name: info.summary for name, info in sorted(_REGISTRY.items())}


def method_info(name: str) -> MethodInfo:
    """The registered method `name`; the one place an unknown name is refused."""
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_sampler(name: str, ctx: MethodContext) -> BaseSampler:
    """Method `name`'s sampler, reading failed trials as its method is told them (methods/failure_view.py)."""
    info = method_info(name)
    try:
        sampler = info.factory(ctx)
        return told_through_view(sampler, name, ctx.space) if isinstance(sampler, BaseSampler) else sampler
    except MethodError:
        raise
    except (ValueError, TypeError) as e:
        if not ctx.options:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in sorted(ctx.options.items()))
        raise MethodError(f"method {name!r}: a method option has a bad value ({e}); options given: {given}") from None


def _load_builtin_methods() -> None:
    import importlib

    modules = ("classical", "cmaes.sampler", "smac_sampler", "peers.hebo", "peers.ngopt", "llm.samplers",
               "centaur.sampler", "agent_code")
    for module in modules:
        try:
            importlib.import_module(f"centaur.methods.{module}")
        except ModuleNotFoundError as e:  # a module of a method not built yet, or an optional extra missing
            if e.name not in (f"centaur.methods.{module}",):
                raise


def typed_option(options: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """Method option `name` as `kind` (int, float, str), or `default` when absent; MethodError naming it."""
    value = options.get(name)
    if value is None:
        return default
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise MethodError(f"method option {name} must be {kind.__name__}, got {value!r} (-o {name}=...)") from None


def option_flag(value: Any) -> bool:
    """A boolean method option given as a bool or as text ("false", "off", "0", "no" are false)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def trial_seed(seed: int, number: int, salt: str = "") -> int:
    """A per-trial seed: the same (seed, trial number) always gives the same stream, so a resumed
    study does not replay the sequence it already ran."""
    digest = hashlib.blake2b(f"{seed}:{number}:{salt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def fresh_seed(seed: int) -> int:
    """The seed a sampler draws from after `reseed_rng()`: the next one of a chain derived from `seed`.
    Every draw of our methods is seeded by (seed, trial number, ...), so only a new seed changes what later
    trials draw (Optuna's contract). A chain, not OS entropy: a program that reseeds the same way draws the
    same, and `study.optimize(n_jobs=k)`, which reseeds in each thread, varies only with thread timing. A
    new sampler built with the user's seed, as a resumed study builds, still draws what the study drew."""
    return trial_seed(seed, -1, "reseed")


def seeded_random_value(
    study: optuna.Study, trial: FrozenTrial, seed: int, name: str, distribution: BaseDistribution
) -> Any:
    """A random value of one parameter, seeded by (seed, trial number, name): reproducible and not
    replayed after a resume. For parameters a relative sampler leaves to `sample_independent`."""
    sampler = optuna.samplers.RandomSampler(seed=trial_seed(seed, trial.number, name) % (2**32 - 1))
    return sampler.sample_independent(study, trial, name, distribution)


def reject_unknown_options(options: dict[str, Any], known: set[str] | frozenset[str], method: str) -> None:
    """A typo in [methods.NAME] or -o would otherwise be ignored silently."""
    unknown = set(options) - set(known)
    if unknown:
        raise MethodError(f"unknown option(s) {sorted(unknown)} for {method}; it takes {', '.join(sorted(known))}")


def require_single_objective(study: optuna.Study, method: str) -> None:
    """Refuse a multi-objective study at once, naming the method (MethodError is a ValueError)."""
    n = len(study.directions)
    if n > 1:
        raise MethodError(f"{method} supports single-objective studies only; this study has {n} objectives")


def minimising_sign(study: optuna.Study) -> float:
    """1.0 for a minimised study, -1.0 for a maximised one: `sign * value` is what an optimizer minimises.
    (`centaur tune` always minimises: it negates a maximised metric itself.)"""
    return -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0


def require_space(ctx: MethodContext, method: str) -> None:
    """Refuse an empty space for a method that proposes whole configurations (it would only sample at random)."""
    if len(ctx.space) == 0:
        raise MethodError(
            f"{method} needs a search space: build it with one, or use centaur.samplers.create({method!r}), "
            "which infers the space from the distributions the Optuna program suggests"
        )


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def set_trial_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Write a user attribute to a trial that is being sampled (samplers get FrozenTrials)."""
    op.set_trial_user_attr(study, trial, key, value)
