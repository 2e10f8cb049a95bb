"""`ngopt`: Nevergrad's NGOpt (its algorithm selector) driven through ask/tell from inside an Optuna sampler.

Parametrization (one Nevergrad parameter per Optuna parameter, same name, Optuna's values): a
categorical is a `Choice`, a power of two a `TransitionChoice` of its exponents (ordered: a mutation
steps to neighbouring powers; option `pow2=choice` makes it an unordered `Choice`), an integer a `Scalar`
with integer casting (`Log` with integer casting on a log scale), a float a `Scalar` (`Log` on a log
scale). NGOpt picks its algorithm from that parametrization and the trial budget it is given (option
`budget`, default 300, about what a 24 h study of the reference task runs); on the reference space it
picks a discrete (1+1) evolution strategy (DiscreteBSOOnePlusOne).

Why ordered: a `Choice` mutates to any power with equal odds, so on the reference task's surrogate
(10 seeds, 24 h) 78% of its trials ran out of memory (the largest device batch is a mutation away from
every point) and it ended at 0.9896; with `TransitionChoice`, 6.5% and 0.9881 (docs/bench.md, "Peers").

Nevergrad models a value only, so a failure is told as the worst success so far ("worst", see
centaur.methods.failures; `failures=penalty` tells the penalty). Each sampler keeps one optimizer
per study and tells it every finished trial it has not told yet, the ones it did not ask included
(the baseline, other workers' trials, a resumed study's past), as new points. Seeded by the study
seed through the parametrization's random state. Needs the extra `centaur-hpo[nevergrad]`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from centaur.methods.base import MethodContext, MethodError, register, reject_unknown_options, typed_option
from centaur.methods.failures import failure_form
from centaur.methods.peers.asktell import PEER_FORMS, AskTellSampler, Observation, python_value
from centaur.space import Param, SearchSpace
from centaur.study import optuna_private as op

log = logging.getLogger(__name__)

OPTIONS = {"budget", "failures", "pow2"}
DEFAULT_BUDGET = 300
POW2_FORMS = ("ordered", "choice")  # a TransitionChoice of the exponents (steps to neighbours), or a Choice


def parametrization_of(space: SearchSpace, seed: int, pow2: str = "ordered") -> Any:
    """The Nevergrad parametrization of `space`, keyed by Optuna parameter name, seeded."""
    import nevergrad as ng
    import numpy as np

    param = ng.p.Dict(**{p.key: _parameter(ng, p, pow2) for p in space})
    param.random_state = np.random.RandomState(seed % (2**32))
    return param


def _parameter(ng: Any, p: Param, pow2: str) -> Any:
    if p.kind == "categorical":
        return ng.p.Choice(list(p.choices)) if len(p.choices) > 1 else ng.p.Constant(p.choices[0])
    low, high = p.distribution.low, p.distribution.high  # type: ignore[attr-defined]  (pow2: the exponents)
    if low == high:
        return ng.p.Constant(low)
    if p.kind == "pow2":
        exponents = list(range(int(low), int(high) + 1))
        return ng.p.TransitionChoice(exponents) if pow2 == "ordered" else ng.p.Choice(exponents)
    scalar = ng.p.Log(lower=low, upper=high) if p.log else ng.p.Scalar(lower=low, upper=high)
    return scalar.set_integer_casting() if p.kind == "int" else scalar


class NgOptSampler(AskTellSampler):
    name = "ngopt"

    def __init__(self, space: SearchSpace, seed: int = 0, *, failures: str = "worst", budget: int = DEFAULT_BUDGET,
                 pow2: str = "ordered") -> None:  # fmt: skip
        super().__init__(space, seed, failures=failures)
        if budget < 1:
            raise MethodError(f"ngopt option budget must be >= 1, got {budget}")
        if pow2 not in POW2_FORMS:
            raise MethodError(f"ngopt option pow2 must be one of {', '.join(POW2_FORMS)}, got {pow2!r}")
        self.budget, self.pow2 = int(budget), pow2
        self._study_key: tuple[str, int] | None = None
        self._opt: Any = None
        self._told: set[int] = set()
        self._asked: dict[int, Any] = {}  # trial number -> the candidate Nevergrad proposed for it

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the optimizer: a copy rebuilds it from the study."""
        state = super().__getstate__()
        state.update(_study_key=None, _opt=None, _told=set(), _asked={})
        return state

    def _reseeded(self) -> None:
        self._opt = None  # rebuilt from the study with the new seed at the next proposal

    def _optimizer(self, study: optuna.Study) -> Any:
        key = (study.study_name, op.study_id(study))
        if self._opt is None or self._study_key != key:
            import nevergrad as ng

            from centaur.methods.peers import nevergrad_compat

            nevergrad_compat.patch()
            param = parametrization_of(self.space, self.seed, self.pow2)
            self._opt = ng.optimizers.NGOpt(param, budget=self.budget, num_workers=1)
            self._study_key, self._told, self._asked = key, set(), {}
        return self._opt

    def _tell(self, opt: Any, observations: list[Observation], current: int) -> None:
        from nevergrad.common.errors import TellNotAskedNotSupportedError

        for o in observations:
            if o.number in self._told or o.number == current:
                continue
            self._told.add(o.number)
            candidate = self._asked.pop(o.number, None)
            if candidate is None or _values(candidate) != o.params:  # not what it proposed: tell what ran
                candidate = opt.parametrization.spawn_child(new_value=o.params)
            try:
                opt.tell(candidate, o.loss)
            except TellNotAskedNotSupportedError:
                log.debug("ngopt's %s cannot learn from trial %d, which it did not propose", _selected(opt), o.number)

    def _propose(
        self, study: optuna.Study, trial: FrozenTrial, observations: list[Observation]
    ) -> tuple[dict[str, Any], str]:
        opt = self._optimizer(study)
        self._tell(opt, observations, trial.number)
        candidate = opt.ask()
        self._asked[trial.number] = candidate
        return _clipped(self.space, _values(candidate)), _selected(opt)


def _values(candidate: Any) -> dict[str, Any]:
    return {k: python_value(v) for k, v in candidate.value.items()}


def _clipped(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Values inside the space: Log's exp() can land an ulp past a bound."""
    out = dict(params)
    for p in space:
        d = p.distribution
        if p.kind in ("float", "int") and isinstance(out[p.key], (int, float)) and math.isfinite(out[p.key]):
            value = min(max(out[p.key], d.low), d.high)  # type: ignore[attr-defined]
            out[p.key] = int(round(value)) if p.kind == "int" else float(value)
    return out


def _selected(opt: Any) -> str:
    """The algorithm NGOpt selected (asked after the first ask, when it has chosen)."""
    inner = getattr(opt, "optim", None)
    return f"ngopt:{getattr(inner, 'name', type(inner).__name__)}"


@register("ngopt", "Nevergrad's NGOpt (its algorithm selector) through ask/tell; failures as the worst success; "
          "needs the nevergrad extra",
          failures="worst")
def ngopt_sampler(ctx: MethodContext) -> BaseSampler:
    reject_unknown_options(ctx.options, OPTIONS, "ngopt")
    try:
        import nevergrad  # noqa: F401
    except ImportError as e:
        raise MethodError(f"the ngopt method needs Nevergrad: pip install 'centaur-hpo[nevergrad]' ({e})") from None
    return NgOptSampler(
        ctx.space,
        ctx.seed,
        failures=failure_form(ctx, "ngopt", PEER_FORMS),
        budget=typed_option(ctx.options, "budget", int, DEFAULT_BUDGET),
        pow2=str(ctx.options.get("pow2", "ordered")),
    )
