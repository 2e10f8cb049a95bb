"""Sampler time per suggestion at 50 and 300 finished trials, for each classical method.

Prints one row per method; the study is pre-filled with synthetic finished trials on the reference
study's 14-hyperparameter space (in-memory storage, so storage latency is not counted).
Usage: python benchmarks/sampler_bench.py [--methods random,tpe,gp,cmaes-optuna,smac] [--repeats 5]
smac: the first suggestion of a fresh sampler also replays the study into SMAC (not in the median).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import optuna

from centaur.methods.base import MethodContext, create_sampler
from centaur.space import reference_space

optuna.logging.set_verbosity(optuna.logging.ERROR)


def prefill(study: optuna.Study, n: int, rng: np.random.Generator) -> None:
    space = reference_space()
    sampler = optuna.samplers.RandomSampler(seed=int(rng.integers(1 << 30)))
    for _ in range(n):
        t = optuna.trial.create_trial
        tmp = optuna.create_study(sampler=sampler)
        trial = tmp.ask(space.distributions())
        value = float(rng.normal(1.0, 0.02))
        study.add_trial(t(params=trial.params, distributions=space.distributions(), value=value,
                          user_attrs={"status": "ok", "config": space.decode(trial.params)}))


def time_per_suggestion(method: str, n: int, repeats: int) -> float:
    space = reference_space()
    sampler = create_sampler(method, MethodContext(space=space, seed=0))
    study = optuna.create_study(sampler=sampler)
    prefill(study, n, np.random.default_rng(0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        times.append(time.perf_counter() - t0)
        study.tell(trial, 1.0)
    close = getattr(sampler, "close", None)
    if callable(close):  # smac: remove its temporary output directory
        close()
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="random,tpe,gp,cmaes-optuna,smac")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'method':14} {'s/suggestion @50':>18} {'s/suggestion @300':>18}")
    for method in args.methods.split(","):
        at50 = time_per_suggestion(method, 50, args.repeats)
        at300 = time_per_suggestion(method, 300, args.repeats)
        print(f"{method:14} {at50:18.4f} {at300:18.4f}", flush=True)


if __name__ == "__main__":
    main()
