"""Optuna's own samplers, configured and seeded for Centaur."""

from __future__ import annotations

import optuna
from optuna.samplers import BaseSampler

from centaur.methods.base import MethodContext, MethodError, register
from centaur.methods.seeding import PerTrialSeeded


def _options(ctx: MethodContext, allowed: set[str]) -> dict:
    unknown = set(ctx.options) - allowed
    if unknown:
        raise MethodError(f"unknown option(s) {sorted(unknown)}; this method takes {sorted(allowed) or 'none'}")
    return dict(ctx.options)


@register("random", "uniform / log-uniform random search")
def random_sampler(ctx: MethodContext) -> BaseSampler:
    _options(ctx, set())
    return PerTrialSeeded(optuna.samplers.RandomSampler(seed=ctx.seed), ctx.seed, "random")


@register("tpe", "Optuna TPE (the study's settings: 10 startup trials, univariate) with a constant liar")
def tpe_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"n_startup_trials", "multivariate", "n_ei_candidates", "constant_liar"})
    sampler = optuna.samplers.TPESampler(
        seed=ctx.seed,
        n_startup_trials=int(opts.get("n_startup_trials", 10)),
        n_ei_candidates=int(opts.get("n_ei_candidates", 24)),
        multivariate=bool(opts.get("multivariate", False)),
        constant_liar=bool(opts.get("constant_liar", True)),  # only matters with parallel workers
    )
    return PerTrialSeeded(sampler, ctx.seed, "tpe")


@register("gp", "Optuna GPSampler (Gaussian-process BO)")
def gp_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"n_startup_trials"})
    try:
        sampler = optuna.samplers.GPSampler(seed=ctx.seed, n_startup_trials=int(opts.get("n_startup_trials", 10)))
    except ImportError as e:
        raise MethodError(f"the gp method needs PyTorch: pip install 'centaur-hpo[torch]' ({e})") from None
    return PerTrialSeeded(sampler, ctx.seed, "gp")


@register("cmaes-optuna", "Optuna CmaEsSampler with the study's exact settings (categoricals sampled at random)")
def cmaes_optuna_sampler(ctx: MethodContext) -> BaseSampler:
    opts = _options(ctx, {"popsize", "sigma0"})
    sampler = optuna.samplers.CmaEsSampler(
        seed=ctx.seed,
        popsize=opts.get("popsize"),
        sigma0=opts.get("sigma0"),
        warn_independent_sampling=False,
    )
    return PerTrialSeeded(sampler, ctx.seed, "cmaes-optuna")
