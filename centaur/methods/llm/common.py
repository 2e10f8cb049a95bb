"""What the LLM samplers share: reading the study's history, prompt formatting, the failure policy and
the per-trial record (proposal source, LLM calls, seconds, tokens, repairs, error)."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from centaur.llm import LLMBadAnswer, LLMClient, LLMError, LLMSettings, LLMUnavailable, resolve_settings
from centaur.llm.local import LLMSetupError
from centaur.methods.base import (
    CONFIG_ATTR,
    SOURCE_ATTR,
    STATUS_ATTR,
    MethodContext,
    MethodError,
    fresh_seed,
    trial_seed,
)
from centaur.space import SearchSpace
from centaur.study import optuna_private as op
from centaur.study.optuna_private import set_trial_attrs

FAILURE_TEXT = {
    "oom": "out of memory",
    "crash": "crashed",
    "timeout": "timed out",
    "diverged": "diverged (NaN/inf loss)",
    "invalid": "rejected as invalid",
    "lost": "lost (its worker died; result unknown)",
}
SYSTEM_PROMPT = (
    "You are an expert in hyperparameter optimization of neural network training. "
    "You answer with a single JSON object and nothing else."
)
PROMPT_MARGIN = 64  # tokens kept free beyond the estimate, for the chat template and estimate error


@dataclass
class Observation:
    """One trial as the LLM methods see it."""

    number: int
    config: dict[str, Any]
    status: str  # "ok", a failure class (oom, crash, ...), "pruned" or "running"
    value: float | None  # the objective of a success; for a failure, the value Optuna was told (penalty);
    # for a pruned trial, its last reported intermediate value
    step: int | None = None  # a pruned trial: the last step it reported (seconds unless unit says "step")
    unit: str = "s"

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.value is not None and math.isfinite(self.value)


@dataclass
class History:
    finished: list[Observation]  # chronological
    pending: list[Observation]
    minimize: bool = True

    @property
    def successes(self) -> list[Observation]:
        return [o for o in self.finished if o.ok]

    @property
    def failures(self) -> list[Observation]:
        return [o for o in self.finished if not o.ok]

    def score(self, obs: Observation) -> float:
        """Lower is better, whatever the study's direction; failures rank last."""
        if not obs.ok:
            return math.inf
        assert obs.value is not None
        return obs.value if self.minimize else -obs.value

    @property
    def best(self) -> Observation | None:
        ok = self.successes
        return min(ok, key=self.score) if ok else None

    def value_range(self) -> tuple[float, float] | None:
        values = [o.value for o in self.successes if o.value is not None]
        return (min(values), max(values)) if values else None

    def seen(self, space: SearchSpace) -> dict[tuple, int]:
        """Configuration identity -> trial number, for everything evaluated or running."""
        return {space.key_of(o.config): o.number for o in self.finished + self.pending}


def read_history(study: optuna.Study, space: SearchSpace, exclude: int | None = None) -> History:
    """Finished and running trials with their configurations in real units (from the `config` attribute,
    else decoded from the Optuna params); trials of another space are skipped."""
    finished, pending = [], []
    for t in study.get_trials(deepcopy=False):
        if t.number == exclude:
            continue
        config = trial_config(t, space)
        if config is None:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            pending.append(Observation(t.number, config, "running", None))
        elif t.state == TrialState.COMPLETE:
            status = str(t.user_attrs.get(STATUS_ATTR, "ok"))
            value = t.value if t.value is not None and math.isfinite(t.value) else None
            finished.append(Observation(t.number, config, status if value is not None else "diverged", value))
        elif t.state == TrialState.FAIL:
            finished.append(Observation(t.number, config, str(t.user_attrs.get(STATUS_ATTR, "lost")), None))
        elif t.state == TrialState.PRUNED:
            value = t.user_attrs.get("pruned_value", t.value)
            step = t.user_attrs.get("pruned_step", t.last_step)
            finished.append(Observation(
                t.number, config, "pruned", float(value) if isinstance(value, (int, float)) else None,
                int(step) if isinstance(step, (int, float)) else None, str(t.user_attrs.get("progress_unit", "s")),
            ))
    minimize = len(study.directions) != 1 or study.direction != StudyDirection.MAXIMIZE
    return History(finished, pending, minimize)


def trial_config(t: FrozenTrial, space: SearchSpace) -> dict[str, Any] | None:
    config = t.user_attrs.get(CONFIG_ATTR)
    if isinstance(config, dict) and all(n in config for n in space.names):
        return {n: config[n] for n in space.names}
    if all(p.key in t.params for p in space):
        return space.decode(t.params)
    return None


# -- formatting -----------------------------------------------------------------------------------
def fmt_number(v: Any) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def config_text(config: Mapping[str, Any], names: Iterable[str]) -> str:
    """Compact JSON of a configuration with short numbers (fewer tokens, still valid JSON)."""
    return "{" + ", ".join(f"{json.dumps(n)}: {fmt_number(config[n])}" for n in names) + "}"


def failure_text(obs: Observation) -> str:
    if obs.status == "pruned":
        return pruned_text(obs)
    return FAILURE_TEXT.get(obs.status, obs.status)


def pruned_text(obs: Observation) -> str:
    """A trial the pruner stopped: `pruned at 60 s, val 1.12` (where it stopped, its last value there)."""
    if obs.step is None:
        where = ""
    elif obs.unit in ("s", "step"):
        where = f" at {obs.step} s" if obs.unit == "s" else f" at step {obs.step}"
    else:  # a time-budget fidelity: the short schedule it ran last
        where = f" after a run at {obs.unit}={obs.step}"
    value = f", val {obs.value:.4g}" if obs.value is not None and math.isfinite(obs.value) else ""
    return f"pruned{where}{value}"


def outcome_text(obs: Observation, metric: str) -> str:
    if obs.ok:
        return f"{metric}={obs.value:.6g}"
    if obs.status == "pruned":
        return pruned_text(obs)
    return f"FAILED: {failure_text(obs)}"


def space_text(space: SearchSpace, names: Sequence[str] | None = None) -> str:
    chosen = set(names) if names is not None else set(space.names)
    lines = [f"- {p.describe()}" for p in space if p.name in chosen]
    lines += [f"- constraint: {c.expression}" for c in space.constraints]
    return "\n".join(lines)


def omitted_line(omitted: int) -> str:
    return f"({omitted} other evaluations are not shown, to keep the prompt short.)\n" if omitted else ""


def llm_seed(seed: int, number: int, salt: str) -> int:
    return trial_seed(seed, number, salt) % (2**31 - 1)


# -- the sampler base -----------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a method proposes for one trial."""

    config: dict[str, Any]
    source: str = "llm"
    raw: dict[str, Any] | None = None
    repairs: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def client_for(ctx: MethodContext) -> LLMClient:
    """The client a method uses: ctx.llm may be an LLMClient (shared), LLMSettings, or the [llm] table."""
    if isinstance(ctx.llm, LLMClient):
        return ctx.llm
    settings = ctx.llm if isinstance(ctx.llm, LLMSettings) else resolve_settings(config=ctx.llm or {})
    log_path = ctx.run_dir / "llm_calls.jsonl" if ctx.run_dir is not None else None
    return LLMClient(settings, log_path=log_path)


FALLBACKS = ("error", "random", "tpe")
FALLBACK_REDRAWS = 20  # seeded random redraws of a fallback configuration that repeats an earlier trial


class LLMSampler(BaseSampler):
    """Samples the whole space in `sample_relative` from an LLM proposal.

    When the LLM gives no usable proposal (unreachable, bad answers after the re-ask), the trial is
    sampled by the explicit fallback (`options["fallback"]`: "error" raises, "random", "tpe" or
    another registered method) and marked `proposal_source = "llm-fallback:<kind>"`. After
    `max_unavailable_in_row` consecutive unreachable-endpoint failures it raises instead, so that a
    dead endpoint does not turn a long run into the fallback method.
    """

    method = "llm"
    default_fallback = "tpe"
    records_source = True  # every trial's proposal_source is written here, not by the worker loop
    turns = "trials"  # what max_unavailable_in_row counts, for messages
    options_known: frozenset[str] = frozenset({"metric", "fallback", "max_unavailable_in_row"})

    def __init__(self, ctx: MethodContext, client: LLMClient | None = None) -> None:
        self.space = ctx.space
        self.seed = ctx.seed
        self.options = dict(ctx.options)
        self.task_description = (ctx.task_description or "Tune the hyperparameters of a training script.").strip()
        self.penalty = ctx.penalty
        self.metric = str(self.options.get("metric", "objective"))
        self.fallback = str(self.options.get("fallback", self.default_fallback))
        self.max_unavailable = int(self.options.get("max_unavailable_in_row", 3))
        self._ctx = ctx
        # A client built here (and the local server it may start) ends with the sampler; a shared one does not.
        self._owns_client = client is None and not isinstance(ctx.llm, LLMClient)
        self._partner: BaseSampler | None = None
        self._unavailable_in_row = 0
        self._check_fallback()
        unknown = set(self.options) - self.options_known
        if unknown:  # a typo in [methods.NAME] would otherwise be ignored silently
            warnings.warn(f"{self.method}: unknown option(s) {sorted(unknown)} ignored; known: "
                          f"{sorted(self.options_known)}", stacklevel=2)
        self.client = client if client is not None else client_for(ctx)

    def close(self) -> None:
        """Stop the LLM client this sampler built, and the local server it started: a bench worker runs
        many studies in one process, and each would otherwise leave an idle server behind."""
        if self._owns_client:
            self.client.close()

    # -- Optuna interface ------------------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if len(study.directions) > 1:
            raise MethodError(f"{self.method} supports single-objective studies only")
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        history = read_history(study, self.space, exclude=trial.number)
        outcome, error, tracker, propose_s = self.ask_llm(trial, lambda: self.propose(study, trial, history))
        if outcome is not None:
            params = self.space.encode(outcome.config)
        else:
            assert error is not None
            fatal = self.llm_failure_is_fatal()
            detail = {"answers": [a[:500] for a in error.answers]} if isinstance(error, LLMBadAnswer) else {}
            outcome = Outcome(config={}, source="llm-error" if fatal else f"llm-fallback:{self.fallback}",
                              detail=detail)
            if not fatal:
                params, outcome.repairs = self._fallback_params(study, trial, search_space, history)
        self._record(study, trial, outcome, tracker, error, propose_s)
        if outcome.source == "llm-error":
            assert error is not None
            if self.fallback != "error":
                raise LLMUnavailable(self.stop_message(error)) from error
            raise error
        return {k: v for k, v in params.items() if k in search_space}

    def ask_llm(
        self, trial: FrozenTrial, propose: Callable[[], Outcome]
    ) -> tuple[Outcome | None, LLMError | None, Any, float]:
        """Run `propose` with its LLM calls tracked; count unreachable-endpoint failures in a row.
        Returns (outcome or None, the LLM error or None, the call tracker, seconds)."""
        outcome: Outcome | None = None
        error: LLMError | None = None
        start = time.perf_counter()
        with self.client.track(trial=trial.number, method=self.method) as tracker:
            try:
                outcome = propose()
            except LLMSetupError:
                raise  # a missing package or model: nothing to fall back from
            except LLMError as e:
                error = e
        if outcome is not None:
            self._unavailable_in_row = 0 if outcome.source == "llm" else self._unavailable_in_row
        else:
            self._unavailable_in_row = self._unavailable_in_row + 1 if isinstance(error, LLMUnavailable) else 0
        return outcome, error, tracker, time.perf_counter() - start

    def llm_failure_is_fatal(self) -> bool:
        """After a failed proposal: stop (fallback "error", or too many unreachable turns in a row)?"""
        return self.fallback == "error" or (0 < self.max_unavailable <= self._unavailable_in_row)

    def stop_message(self, error: LLMError) -> str:
        """Why the study stops after `max_unavailable_in_row` unreachable turns, and what to do about it."""
        return (
            f"{self.method}: the LLM endpoint {self.client.base_url or '(local server)'} failed "
            f"{self._unavailable_in_row} {self.turns} in a row (last: {error}); the study stops instead of "
            f"silently becoming {self.fallback_label}. Fix the endpoint (llm.base_url / CENTAUR_LLM_BASE_URL) "
            "and run the same command again to resume, or raise options.max_unavailable_in_row (0: never stop)."
        )

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only parameters outside our space get here (e.g. a script that suggests extra ones).
        sampler = RandomSampler(seed=trial_seed(self.seed, trial.number, param_name))
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def propose(self, study: optuna.Study, trial: FrozenTrial, history: History) -> Outcome:
        raise NotImplementedError

    def reseed_rng(self) -> None:
        # Random draws and the seed sent with each LLM request come from (seed, trial number).
        self.seed = fresh_seed(self.seed)
        if self._partner is not None:
            self._partner.reseed_rng()

    # -- fallback --------------------------------------------------------------------------------
    @property
    def fallback_label(self) -> str:
        return f"the fallback method ({self.fallback})"

    def _check_fallback(self) -> None:
        if self.fallback in FALLBACKS:
            return
        from centaur.methods.base import available_methods

        if self.fallback not in available_methods():
            raise MethodError(
                f"{self.method}: unknown fallback {self.fallback!r}; use one of {', '.join(FALLBACKS)} "
                "or a registered method name"
            )

    def _fallback_params(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution], history: History
    ) -> tuple[dict[str, Any], list[str]]:
        """The fallback's params for `trial`, and notes. The draw is seeded by (seed, trial number), never
        by a stream that restarts with the process: a resumed study must not replay the configurations its
        earlier fallback trials ran. A draw that still repeats an evaluated or running configuration is
        replaced by a seeded random one (noted)."""
        if self.fallback == "random":
            sampler: BaseSampler = RandomSampler(seed=trial_seed(self.seed, trial.number, "fallback"))
        else:
            sampler = self._partner_sampler()
            sampler.before_trial(study, trial)  # Optuna does not call it on a partner: per-trial reseeding is here
        params = sample_with(sampler, study, trial, search_space)
        notes: list[str] = []
        if not all(p.key in params for p in self.space):
            return params, notes
        seen = history.seen(self.space)
        for attempt in range(FALLBACK_REDRAWS):
            twin = seen.get(self.space.key_of(self.space.decode(params)))
            if twin is None:
                break
            notes.append(f"fallback draw repeated trial {twin}: redrawn at random")
            config = random_config(self.space, study, trial, self.seed, f"fallback-redraw{attempt}")
            params = {**params, **{k: v for k, v in self.space.encode(config).items() if k in search_space}}
        return params, notes

    def _partner_sampler(self) -> BaseSampler:
        if self._partner is None:
            from centaur.methods.base import available_methods, create_sampler

            if self.fallback in available_methods() and self.fallback not in (self.method,):
                partner_ctx = MethodContext(space=self.space, seed=self.seed, penalty=self.penalty,
                                            run_dir=self._ctx.run_dir)
                self._partner = create_sampler(self.fallback, partner_ctx)
            else:  # "tpe" before the classical methods are registered
                from centaur.methods.seeding import PerTrialSeeded

                self._partner = PerTrialSeeded(TPESampler(seed=self.seed), self.seed, "tpe")
        return self._partner

    # -- records ---------------------------------------------------------------------------------
    def _record(self, study: optuna.Study, trial: FrozenTrial, outcome: Outcome, tracker: Any,
                error: LLMError | None, propose_s: float) -> None:
        attrs = {
            SOURCE_ATTR: outcome.source,
            "llm_calls": tracker.n_calls,
            "llm_seconds": round(tracker.seconds, 4),
            "llm_prompt_tokens": tracker.prompt_tokens,
            "llm_completion_tokens": tracker.completion_tokens,
            "llm_repairs": outcome.repairs,
            "llm_error": None if error is None else f"{type(error).__name__}: {error}"[:2000],
            "llm_proposal": outcome.raw,
            "llm_detail": {**outcome.detail, "propose_s": round(propose_s, 4)},
        }
        set_trial_attrs(op.storage_of(study), op.trial_id(trial), user_attrs=attrs)  # one transaction, not nine

    # -- prompt parts shared by the methods that propose whole configurations ---------------------
    def row(self, o: Observation) -> str:
        return f"trial {o.number}: {config_text(o.config, self.space.names)} -> {outcome_text(o, self.metric)}"

    def running_text(self, history: History) -> str | None:
        """The running trials (the last 10), so they are not proposed again; None when there are none."""
        if not history.pending:
            return None
        running = "".join(f"trial {o.number}: {config_text(o.config, self.space.names)}\n"
                          for o in history.pending[-10:])
        return f"## Running now (do not propose these again)\n{running}"

    # -- prompt budget ---------------------------------------------------------------------------
    def row_budget(self, *fixed_texts: str) -> int:
        """Tokens left for history rows once the fixed parts of a prompt are in."""
        used = self.client.counter.count_messages([{"content": t} for t in fixed_texts])
        return self.client.settings.prompt_budget - used - PROMPT_MARGIN


def sample_with(sampler: BaseSampler, study: optuna.Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """A full set of params for `trial` from another sampler (relative where it has it, else independent)."""
    relative_space = {k: v for k, v in sampler.infer_relative_search_space(study, trial).items() if k in search_space}
    params = dict(sampler.sample_relative(study, trial, relative_space)) if relative_space else {}
    for name, dist in search_space.items():
        if name not in params:
            params[name] = sampler.sample_independent(study, trial, name, dist)
    return params


def random_config(space: SearchSpace, study: optuna.Study, trial: FrozenTrial, seed: int, salt: str,
                  names: Sequence[str] | None = None) -> dict[str, Any]:
    """A seeded random configuration (of `names`, default the whole space) in real units: the same
    (seed, trial number, salt) always gives the same values."""
    rng = RandomSampler(seed=trial_seed(seed, trial.number, salt))
    config: dict[str, Any] = {}
    for _ in range(100):  # a whole configuration must satisfy the constraints: redraw until it does
        config = {p.name: p.decode(rng.sample_independent(study, trial, p.key, p.distribution))
                  for p in space if names is None or p.name in names}
        if names is not None or not space.violations(config):
            break
    return config
