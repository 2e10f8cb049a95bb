"""`hebo`: Huawei's HEBO (GP with input and output warping, MACE acquisition optimised by NSGA-II)
driven from inside an Optuna sampler.

Design space (one HEBO parameter per Optuna parameter, same name): a float is `num` (`pow` on a log
scale), an integer `int` (`pow_int` on a log scale), a power of two HEBO's own `int_exponent` (base 2:
the powers themselves, searched as their integer exponent), a categorical `cat` (its choices by index,
so any Python value round-trips). A single-valued parameter is not shown to HEBO.

HEBO is stateless between suggestions apart from its Sobol stream, so each proposal builds it afresh
from the study's finished trials (`observe` of every trial it can learn from, whoever proposed it),
then asks `suggest()`: the first 1 + (number of parameters) observations come from HEBO's scrambled
Sobol design (seeded by the study seed; the baseline counts, and the stream continues after the
points it already proposed), then from its model. HEBO models a value only, so a failure is told as
the worst success so far ("worst", centaur.methods.failures; `failures=penalty` tells the penalty).

Seeding: HEBO draws from NumPy's, PyTorch's and Python's global generators, and its NSGA-II runs in
pymoo, which since 0.6.1 draws fresh OS entropy when it is given no seed (HEBO gives none). Each
proposal runs with the global generators seeded by (seed, trial number), restored afterwards, and with
pymoo's `minimize` given a seed from them; one process-wide lock serialises proposals, since global
state is shared. So a study is reproducible and the rest of the process is left as it was. HEBO sets
PyTorch to one thread when it is imported, and prints its GP's numerical retries; those lines go to
this module's debug log. Needs `HEBO` (see docs/samplers.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from centaur.methods.base import MethodContext, MethodError, register, reject_unknown_options, trial_seed
from centaur.methods.failures import failure_form
from centaur.methods.peers.asktell import PEER_FORMS, AskTellSampler, Observation, python_value
from centaur.methods.torch_threads import DEFAULT_THREADS, threads_option, torch_threads
from centaur.space import Param, SearchSpace

log = logging.getLogger(__name__)

OPTIONS = {"failures", "threads"}
SOBOL, MODEL = "hebo:sobol", "hebo:model"
_GLOBAL_STATE = threading.Lock()  # the generators (and pymoo's entry point) are the process's, not ours


def design_of(space: SearchSpace) -> list[dict[str, Any]]:
    """HEBO's parameter records for the parameters of `space` that can vary."""
    return [_record(p) for p in space if not _single(p)]


def _single(p: Param) -> bool:
    d = p.distribution
    return len(p.choices) == 1 if p.kind == "categorical" else d.low == d.high  # type: ignore[attr-defined]


def _record(p: Param) -> dict[str, Any]:
    if p.kind == "categorical":
        return {"name": p.key, "type": "cat", "categories": [str(i) for i in range(len(p.choices))]}
    if p.kind == "pow2":
        return {"name": p.key, "type": "int_exponent", "lb": int(p.low), "ub": int(p.high), "base": 2}  # type: ignore[arg-type]
    kind = {("float", False): "num", ("float", True): "pow", ("int", False): "int", ("int", True): "pow_int"}
    return {"name": p.key, "type": kind[(p.kind, p.log)], "lb": p.low, "ub": p.high}


def to_hebo(p: Param, value: Any) -> Any:
    """An Optuna parameter value as HEBO's design space holds it."""
    if p.kind == "categorical":
        return str(p.choices.index(value))
    if p.kind == "pow2":
        return 2 ** int(value)
    return value


def from_hebo(p: Param, value: Any) -> Any:
    """HEBO's value -> the Optuna parameter value (inside the range: HEBO's log scales round-trip by exp)."""
    value = python_value(value)
    if p.kind == "categorical":
        return p.choices[int(value)]
    if p.kind == "pow2":
        return int(round(math.log2(value)))
    d = p.distribution
    clipped = min(max(float(value), d.low), d.high)  # type: ignore[attr-defined]
    return int(round(clipped)) if p.kind == "int" else clipped


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """NumPy's, Python's and PyTorch's global generators seeded for the block, then put back."""
    import torch

    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextlib.contextmanager
def seeded_pymoo(seed: int) -> Iterator[None]:
    """HEBO's NSGA-II (pymoo's `minimize`, called without a seed) given `seed` for the block."""
    from hebo.acq_optimizers import evolution_optimizer

    original = evolution_optimizer.minimize
    evolution_optimizer.minimize = functools.partial(original, seed=seed)
    try:
        yield
    finally:
        evolution_optimizer.minimize = original


class HeboSampler(AskTellSampler):
    name = "hebo"

    def __init__(self, space: SearchSpace, seed: int = 0, *, failures: str = "worst",
                 threads: int = DEFAULT_THREADS) -> None:
        super().__init__(space, seed, failures=failures)
        self.threads = threads  # torch threads while HEBO proposes (methods/torch_threads.py)

    def _propose(
        self, study: optuna.Study, trial: FrozenTrial, observations: list[Observation]
    ) -> tuple[dict[str, Any], str]:
        import pandas as pd
        from hebo.design_space.design_space import DesignSpace
        from hebo.optimizers.hebo import HEBO

        varying = [p for p in self.space if not _single(p)]
        params = {p.key: p.distribution.low for p in self.space if _single(p) and p.kind != "categorical"}  # type: ignore[attr-defined]
        params.update({p.key: p.choices[0] for p in self.space if _single(p) and p.kind == "categorical"})
        if not varying:
            return params, SOBOL
        opt = HEBO(DesignSpace().parse(design_of(self.space)), scramble_seed=self.seed % (2**31))
        if observations:
            X = pd.DataFrame([{p.key: to_hebo(p, o.params[p.key]) for p in varying} for o in observations])
            opt.observe(X, np.array([[o.loss] for o in observations]))
        origin = SOBOL if len(observations) < opt.rand_sample else MODEL
        if origin == SOBOL:  # continue HEBO's design stream after the points it already proposed here
            opt.sobol.fast_forward(self.origins(study).count(SOBOL))
        printed = io.StringIO()
        seed = trial_seed(self.seed, trial.number, self.name)
        with (_GLOBAL_STATE, torch_threads(self.threads), seeded_globals(seed), seeded_pymoo(seed),
              contextlib.redirect_stdout(printed)):
            rec = opt.suggest(n_suggestions=1)
        if printed.getvalue():
            log.debug("hebo, trial %d: %s", trial.number, printed.getvalue().strip())
        row = rec.iloc[0]
        params.update({p.key: from_hebo(p, row[p.key]) for p in varying})
        return params, origin


@register("hebo", "HEBO (GP with warping, MACE acquisition, NSGA-II); failures as the worst success; needs HEBO",
          failures="worst")
def hebo_sampler(ctx: MethodContext) -> BaseSampler:
    reject_unknown_options(ctx.options, OPTIONS, "hebo")
    try:
        import hebo  # noqa: F401
    except ImportError as e:
        raise MethodError(
            f"the hebo method needs HEBO: pip install 'centaur-hpo[hebo]' && pip install --no-deps HEBO==0.3.6 ({e})"
        ) from None
    return HeboSampler(ctx.space, ctx.seed, failures=failure_form(ctx, "hebo", PEER_FORMS),
                       threads=threads_option(ctx.options))
