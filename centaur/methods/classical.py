"""Optuna's own samplers, configured and seeded for Centaur, each shown failed trials in its form
(centaur.methods.failures; option `failures=penalty|constraint|worst`)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from centaur.methods.base import MethodContext, MethodError, option_flag, register, typed_option
from centaur.methods.failures import FailuresTold, failure_form
from centaur.methods.seeding import PerTrialSeeded
from centaur.methods.torch_threads import threads_option, torch_threads


def _options(ctx: MethodContext, allowed: set[str]) -> dict:
    allowed = allowed | {"failures"}
    unknown = set(ctx.options) - allowed
    if unknown:
        raise MethodError(f"unknown option(s) {sorted(unknown)}; this method takes {sorted(allowed)}")
    return dict(ctx.options)


def _told(sampler: BaseSampler, ctx: MethodContext, name: str) -> BaseSampler:
    """Seeded per trial, reading the study with the method's failure form."""
    return FailuresTold(PerTrialSeeded(sampler, ctx.seed, name), failure_form(ctx, name), name, ctx.space)


@register("random", "uniform / log-uniform random search", failures="penalty")
def random_sampler(ctx: MethodContext) -> BaseSampler:
    _options(ctx, set())
    return _told(optuna.samplers.RandomSampler(seed=ctx.seed), ctx, "random")


@register("tpe", "Optuna TPE (the study's settings: 10 startup trials, univariate) with a constant liar",
          failures="penalty")
def tpe_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"n_startup_trials", "multivariate", "n_ei_candidates", "constant_liar"})
    sampler = optuna.samplers.TPESampler(
        seed=ctx.seed,
        n_startup_trials=typed_option(opts, "n_startup_trials", int, 10),
        n_ei_candidates=typed_option(opts, "n_ei_candidates", int, 24),
        multivariate=option_flag(opts.get("multivariate", False)),
        constant_liar=option_flag(opts.get("constant_liar", True)),  # only matters with parallel workers
    )
    return _told(sampler, ctx, "tpe")


# Optuna 5.0's TPESampler defaults: 10 startup trials, 24 EI candidates, gamma min(ceil(0.1 n), 25),
# prior weight 1, magic clip on, endpoints off, and (new since 4.x) multivariate for single-objective
# studies and a constant liar; both are set here explicitly so that they hold for any study.
# Failures as infeasible trials (Optuna 5's own c-TPE): on the surrogate it ran exactly the same trials as
# with the penalty (10 seeds, docs/bench.md "Peers"), since both put failures in TPE's "bad" group.
@register("tpe-optuna", "Optuna 5 TPE as Optuna ships it (multivariate, constant liar, 10 startup trials, "
          "24 EI candidates); failures as infeasible trials", failures="constraint")
def tpe_optuna_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"n_startup_trials"})
    sampler = optuna.samplers.TPESampler(
        seed=ctx.seed,
        n_startup_trials=typed_option(opts, "n_startup_trials", int, 10),
        multivariate=True,
        constant_liar=True,
    )
    return _told(sampler, ctx, "tpe-optuna")


class _GPSampler(optuna.samplers.GPSampler):
    """Optuna's GPSampler proposing with a few torch threads (methods/torch_threads.py)."""

    def __init__(self, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._torch_threads = threads

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        with torch_threads(self._torch_threads):
            return super().sample_relative(study, trial, search_space)


@register("gp", "Optuna GPSampler (Gaussian-process BO, log-EI); failures as constraint violations",
          failures="constraint")
def gp_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"n_startup_trials", "threads"})
    threads = threads_option(opts)
    try:
        sampler = _GPSampler(threads, seed=ctx.seed, n_startup_trials=typed_option(opts, "n_startup_trials", int, 10))
    except ImportError as e:
        raise MethodError(f"the gp method needs PyTorch: pip install 'centaur-hpo[torch]' ({e})") from None
    return _told(sampler, ctx, "gp")


@register("cmaes-optuna", "Optuna CmaEsSampler with the study's exact settings (categoricals sampled at random)",
          failures="penalty")
def cmaes_optuna_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"popsize", "sigma0"})
    sampler = optuna.samplers.CmaEsSampler(
        seed=ctx.seed,
        popsize=typed_option(opts, "popsize", int),
        sigma0=typed_option(opts, "sigma0", float),
        warn_independent_sampling=False,
    )
    return _told(sampler, ctx, "cmaes-optuna")
