"""Fixed-space LLM methods: agent-hps (the LLM proposes the next configuration), llambo (LLAMBO as in
the paper: LLM candidate generation towards a target, LLM surrogate, expected improvement) and
llambo-hub (the OptunaHub variant: binary surrogate labels, random categoricals, failures to avoid).

Every method records into each trial how it was proposed (see LLMSampler); none falls back silently.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from centaur.llm import (
    LLMBadAnswer,
    LLMClient,
    Proposal,
    ProposalError,
    cap_history,
    config_schema,
    extract_json,
    extract_number,
    validate_proposal,
)
from centaur.methods.base import MethodContext, MethodError, register, require_space
from centaur.methods.llm.common import (
    SYSTEM_PROMPT,
    History,
    LLMSampler,
    Observation,
    Outcome,
    config_text,
    failure_text,
    llm_seed,
    omitted_line,
    outcome_text,
    random_config,
    space_text,
)


def _direction_text(history: History) -> str:
    return "lower is better" if history.minimize else "higher is better"


def _incumbent(sampler: LLMSampler, history: History) -> tuple[dict[str, Any], str]:
    best = history.best
    if best is None:
        return sampler.space.defaults(), "defaults"
    return best.config, f"incumbent (trial {best.number})"


# ---------------------------------------------------------------------------------------------------
# agent-hps
# ---------------------------------------------------------------------------------------------------
class AgentHPSSampler(LLMSampler):
    """The reference study's "Karpathy agent (14 HPs)", with its defects fixed (section 2.7): the real
    hardware and memory cap come from the task description, the space keeps its order, failures are
    shown by class (never a fake value), running trials are listed, the prompt fits the context,
    proposals are validated and repaired (ints rounded, categoricals checked), a bad or duplicate
    answer is re-asked once, and a failed proposal uses the explicit fallback."""

    method = "agent-hps"
    options_known = LLMSampler.options_known | {"history", "best_k", "temperature"}

    def __init__(self, ctx: MethodContext, client: LLMClient | None = None) -> None:
        super().__init__(ctx, client)
        self.history_k = int(self.options.get("history", 20))  # most recent evaluations shown
        self.best_k = int(self.options.get("best_k", 3))  # plus the best ones, when older
        self.temperature = float(self.options.get("temperature", 0.7))

    def propose(self, study: optuna.Study, trial: FrozenTrial, history: History) -> Outcome:
        space = self.space
        fill, fill_source = _incumbent(self, history)
        seen = history.seen(space)
        header = (
            f"## Task\n{self.task_description}\n\n"
            f"## Search space\n{space_text(space)}\n"
            "Integers are rounded, powers of two snap to the nearest power, numbers are clipped to their range.\n\n"
        )
        footer = self._footer(history)
        budget = self.row_budget(SYSTEM_PROMPT, header + footer)
        rows, omitted = cap_history(
            history.finished, render=self.row, budget_tokens=budget, counter=self.client.counter,
            rank=history.score, last_k=self.history_k, best_k=self.best_k,
        )
        evaluations = "".join(self.row(o) + "\n" for o in rows) or "None yet: this is the first evaluation.\n"
        prompt = (header + f"## Evaluations so far ({self.metric}: {_direction_text(history)})\n"
                  + evaluations + omitted_line(omitted) + "\n" + footer)

        def accept(obj: dict[str, Any]) -> Proposal:
            proposal = validate_proposal(space, obj, fill_from=fill, fill_source=fill_source)
            twin = seen.get(space.key_of(proposal.config))
            if twin is not None:
                raise ProposalError(
                    f"that configuration is the same as trial {twin}, which was already evaluated or is running; "
                    "propose a different configuration"
                )
            return proposal

        answer = self.client.ask_json(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            accept=accept,
            schema=config_schema(space) if self.client.settings.json_schema else None,
            purpose=f"{self.method}:propose",
            temperature=self.temperature,
            seed=llm_seed(self.seed, trial.number, self.method),
            reask_hint=f"Use exactly these keys: {', '.join(space.names)}, with values inside their ranges.",
        )
        proposal: Proposal = answer.value
        repairs = [f"first answer rejected: {p}" for p in answer.problems] + proposal.repairs
        return Outcome(config=proposal.config, raw=answer.raw, repairs=repairs,
                       detail={"rows_shown": len(rows), "rows_omitted": omitted, "reasked": answer.reasked})

    def _footer(self, history: History) -> str:
        parts = []
        running = self.running_text(history)
        if running:
            parts.append(running)
        best = history.best
        if best is not None:
            pretty = json.dumps(best.config, indent=1)
            parts.append(f"## Best so far\ntrial {best.number} -> {outcome_text(best, self.metric)}\n{pretty}\n")
        parts.append(
            "## What to do\n"
            "Propose the next configuration to evaluate. Learn from the successes and from the failures "
            "(out of memory means the configuration needs more memory than the hardware above has; "
            "a timeout means it is too slow). Do not repeat a configuration that was evaluated or is running. "
            f"Use exactly these keys: {', '.join(self.space.names)}. "
            "Reply with only a JSON object mapping each key to its value."
        )
        return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------
# LLAMBO
# ---------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    config: dict[str, Any]
    origin: str  # "llm" or "random" (padding, as in the paper)
    raw: dict[str, Any] | None = None
    repairs: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    score: float = float("nan")  # acquisition value: EI (llambo) or P(good) (llambo-hub)
    mean: float = float("nan")
    std: float = float("nan")


@dataclass
class Example:
    obs: Observation
    value: float  # the value shown (a failure's penalty value for llambo)
    note: str = ""
    label: int | None = None


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class LlamboSampler(LLMSampler):
    """LLAMBO (Liu et al., ICLR 2024) as in the paper, on a fixed space.

    Acquisition: the LLM proposes `n_candidates` configurations that should reach the target
    t = best - alpha * (max - min) of the successful values (for minimization; mirrored for
    maximization). With alpha > 0 the target is *better* than the best seen, which is the paper's
    intent; the reference reimplementation used alpha = -0.2 with the same formula and aimed worse
    than its best. Surrogate: for each candidate the LLM predicts the objective `n_samples` times
    (n completions where the server supports it, otherwise repeated seeded calls); their mean and
    standard deviation give the expected improvement, and the best EI is proposed.

    Failed trials are observations with a penalty value (`failure_value`: "adaptive" = worst success
    plus the range of successes, recomputed per prompt so it never escalates; "told" = the value the
    study was told). The history is capped to the prompt budget (best and most recent rows, with a
    line saying how many were left out). Candidates are repaired into the space, not dropped.
    """

    method = "llambo"
    options_known = LLMSampler.options_known | {
        "n_candidates", "n_samples", "alpha", "max_rounds", "min_candidates", "pad_random", "failure_value",
        "n_initial", "candidate_temperature", "surrogate_temperature", "top_p",
    }
    default_alpha = 0.1
    default_samples = 10
    default_initial = 0

    def __init__(self, ctx: MethodContext, client: LLMClient | None = None) -> None:
        super().__init__(ctx, client)
        o = self.options
        self.n_candidates = int(o.get("n_candidates", 10))
        self.n_samples = int(o.get("n_samples", self.default_samples))
        self.alpha = float(o.get("alpha", self.default_alpha))
        self.max_rounds = int(o.get("max_rounds", 3))
        self.min_candidates = int(o.get("min_candidates", max(1, math.ceil(self.n_candidates / 2))))
        self.pad_random = bool(o.get("pad_random", True))
        self.failure_value = str(o.get("failure_value", "adaptive"))
        self.n_initial = int(o.get("n_initial", self.default_initial))
        self.candidate_temperature = float(o.get("candidate_temperature", 0.8))
        self.surrogate_temperature = float(o.get("surrogate_temperature", 0.7))
        self.top_p = float(o.get("top_p", 0.95))
        if self.failure_value not in ("adaptive", "told"):
            raise MethodError(f"{self.method}: failure_value must be 'adaptive' or 'told', not {self.failure_value!r}")

    # -- what the LLM sees -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Parameters the LLM chooses."""
        return self.space.names

    def fixed_values(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        """Parameters set outside the LLM for this trial (none here)."""
        return {}

    def examples(self, history: History) -> list[Example]:
        span = history.value_range()
        out = []
        for o in history.finished:
            if o.ok:
                assert o.value is not None
                out.append(Example(o, o.value))
                continue
            if self.failure_value == "told" and o.value is not None:
                value = o.value
            elif span is not None:
                lo, hi = span
                width = (hi - lo) or (abs(hi) * 0.1 or 1.0)
                value = hi + width if history.minimize else lo - width
            else:
                value = o.value if o.value is not None else self.penalty
            out.append(Example(o, value, note=f" (failed: {failure_text(o)}; penalty value)"))
        return out

    def avoid_text(self, history: History) -> str:
        return ""

    def context(self, history: History) -> str:
        return (f"{self.task_description}\n\nHyperparameters and their allowed values:\n"
                f"{space_text(self.space, self.names)}\n{self.avoid_text(history)}")

    # -- the method --------------------------------------------------------------------------------
    def propose(self, study: optuna.Study, trial: FrozenTrial, history: History) -> Outcome:
        if len(history.finished) + len(history.pending) < self.n_initial:
            config = random_config(self.space, study, trial, self.seed, "initial")
            return Outcome(config=config, source="random-init", detail={"phase": "initial"})
        fixed = self.fixed_values(study, trial)
        examples = self.examples(history)
        if not any(e.obs.ok for e in examples):
            return self._warm_start(trial, history, fixed, examples)
        best = history.best
        assert best is not None and best.value is not None
        lo, hi = history.value_range() or (best.value, best.value)
        span = (hi - lo) or (abs(best.value) * 0.1 or 0.1)
        target = best.value - self.alpha * span if history.minimize else best.value + self.alpha * span
        candidates, gen = self._generate(study, trial, history, fixed, examples, target)
        self._predict(trial, history, examples, candidates)
        rated = [c for c in candidates if math.isfinite(c.score)]
        if not rated:
            raise LLMBadAnswer(f"{self.method}: the surrogate gave no usable prediction for any of "
                               f"{len(candidates)} candidates")
        top = max(c.score for c in rated)
        ties = [c for c in rated if c.score == top]
        chosen = ties[0] if len(ties) == 1 else random.Random(llm_seed(self.seed, trial.number, "tie")).choice(ties)
        ranked = sorted(rated, key=lambda c: -c.score)[:5]
        detail = {
            "phase": "acquisition", "target": target, **gen,
            "n_rated": len(rated), "chosen_origin": chosen.origin,
            "chosen": {"score": chosen.score, "mean": chosen.mean, "std": chosen.std,
                       "samples": chosen.samples[:20]},
            "top": [{"score": c.score, "mean": c.mean, "std": c.std, "origin": c.origin} for c in ranked],
            "llm_candidates": [c.raw for c in candidates if c.origin == "llm"],  # what the model proposed
        }
        return Outcome(config=chosen.config, raw=chosen.raw, repairs=chosen.repairs, detail=detail)

    def _warm_start(self, trial: FrozenTrial, history: History, fixed: dict[str, Any],
                    examples: list[Example]) -> Outcome:
        """No success yet: the paper's zero-shot start, one configuration from the task context alone."""
        fill, fill_source = _incumbent(self, history)
        seen = history.seen(self.space)
        failed = "".join(f"{config_text(e.obs.config, self.names)}{e.note}\n" for e in examples[-10:])
        prompt = (f"{self.context(history)}\n"
                  + (f"These configurations failed:\n{failed}\n" if failed and not self.avoid_text(history) else "")
                  + "Recommend a configuration that is likely to perform well on this task. "
                  "Reply with only the JSON configuration.")

        def accept(obj: dict[str, Any]) -> Proposal:
            proposal = self._to_config(obj, fill, fill_source, fixed)
            if self.space.key_of(proposal.config) in seen:
                raise ProposalError("that configuration was already evaluated; propose a different one")
            return proposal

        answer = self.client.ask_json(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            accept=accept, schema=self._schema(), purpose=f"{self.method}:warm-start",
            temperature=self.candidate_temperature, seed=llm_seed(self.seed, trial.number, "warm"),
        )
        repairs = [f"first answer rejected: {p}" for p in answer.problems] + answer.value.repairs
        return Outcome(config=answer.value.config, raw=answer.raw, repairs=repairs, detail={"phase": "warm-start"})

    def _schema(self) -> dict[str, Any] | None:
        return config_schema(self.space, self.names) if self.client.settings.json_schema else None

    def _to_config(self, obj: dict[str, Any], fill: dict[str, Any], fill_source: str,
                   fixed: dict[str, Any]) -> Proposal:
        return validate_proposal(self.space, obj, fill_from={**fill, **fixed}, fill_source=fill_source,
                                 names=self.names)

    # -- acquisition: candidate generation ---------------------------------------------------------
    def _generate(self, study: optuna.Study, trial: FrozenTrial, history: History, fixed: dict[str, Any],
                  examples: list[Example], target: float) -> tuple[list[Candidate], dict[str, Any]]:
        fill, fill_source = _incumbent(self, history)
        head = (f"{self.context(history)}\nThe following are past evaluations: the performance ({self.metric}, "
                f"{_direction_text(history)}) of each hyperparameter configuration.\n")
        pending = "".join(f"{config_text(o.config, self.names)}\n" for o in history.pending[-10:])
        tail = ((f"Configurations being evaluated right now (do not propose them):\n{pending}" if pending else "")
                + f"Recommend a configuration that can achieve the target performance of {target:.6g}. Do not "
                "recommend values at the minimum or maximum of a range unless the evidence points there, and do "
                "not repeat an evaluated configuration. Reply with only the JSON configuration.\n"
                f"Performance: {target:.6g}\nHyperparameter configuration:")
        rows, omitted = self._rows(examples, history, self._gen_row, SYSTEM_PROMPT, head + tail)
        prompt = head + "".join(self._gen_row(e) for e in rows) + omitted_line(omitted) + tail
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        seen = history.seen(self.space)
        candidates: list[Candidate] = []
        keys: set[tuple] = set()
        problems: list[str] = []
        duplicates = rounds = 0
        while rounds < self.max_rounds and len(candidates) < self.min_candidates:
            reply = self.client.chat(
                messages, schema=self._schema(), n=self.n_candidates - len(candidates),
                temperature=self.candidate_temperature, top_p=self.top_p,
                seed=llm_seed(self.seed, trial.number, f"candidates{rounds}"), purpose=f"{self.method}:candidates",
            )
            rounds += 1
            for text in reply.texts:
                obj = extract_json(text)
                if obj is None:
                    problems.append("no JSON object")
                    continue
                try:
                    proposal = self._to_config(obj, fill, fill_source, fixed)
                except ProposalError as e:
                    problems.append(str(e))
                    continue
                key = self.space.key_of(proposal.config)
                if key in seen or key in keys:
                    duplicates += 1
                    continue
                keys.add(key)
                candidates.append(Candidate(proposal.config, "llm", raw=obj, repairs=proposal.repairs))
        n_llm = len(candidates)
        if n_llm == 0:
            raise LLMBadAnswer(f"{self.method}: no usable candidate in {rounds} round(s) "
                               f"({duplicates} duplicates; problems: {'; '.join(problems[:5]) or 'none'})")
        padding = 0
        while self.pad_random and len(candidates) < self.n_candidates and padding < 5 * self.n_candidates:
            config = {**random_config(self.space, study, trial, self.seed, f"pad{padding}"), **fixed}
            padding += 1
            key = self.space.key_of(config)
            if key not in seen and key not in keys and not self.space.violations(config):
                keys.add(key)
                candidates.append(Candidate(config, "random"))
        info = {"rounds": rounds, "candidates_llm": n_llm, "candidates_random": len(candidates) - n_llm,
                "duplicates": duplicates, "invalid": len(problems), "rows_shown": len(rows),
                "rows_omitted": omitted}
        return candidates, info

    def _gen_row(self, e: Example) -> str:
        configuration = config_text(e.obs.config, self.names)
        return f"Performance: {e.value:.6g}{e.note}\nHyperparameter configuration: {configuration}\n"

    def _rows(self, examples: list[Example], history: History, render: Any, *fixed: str) -> tuple[list[Example], int]:
        budget = self.row_budget(*fixed)
        return cap_history(examples, render=render, budget_tokens=budget, counter=self.client.counter,
                           rank=lambda e: history.score(e.obs))

    # -- surrogate ---------------------------------------------------------------------------------
    surrogate_key = "performance"

    def _surrogate_intro(self, history: History) -> str:
        return (f"The following are past evaluations: each hyperparameter configuration is followed by its "
                f"performance ({self.metric}, {_direction_text(history)}).\n")

    def _surrogate_question(self) -> str:
        return ('Predict the performance of the last configuration. Reply with only {"performance": <number>}.\n')

    def _surrogate_schema(self) -> dict[str, Any] | None:
        if not self.client.settings.json_schema:
            return None
        return {"type": "object", "properties": {"performance": {"type": "number"}}, "required": ["performance"],
                "additionalProperties": False}

    def _sur_row(self, e: Example) -> str:
        configuration = config_text(e.obs.config, self.names)
        return f"Hyperparameter configuration: {configuration}\nPerformance: {e.value:.6g}{e.note}\n"

    def _surrogate_examples(self, examples: list[Example], history: History) -> list[Example]:
        return examples

    def _predict(self, trial: FrozenTrial, history: History, examples: list[Example],
                 candidates: Sequence[Candidate]) -> None:
        head = f"{self.context(history)}\n{self._surrogate_intro(history)}"
        question = self._surrogate_question()
        longest = max((config_text(c.config, self.names) for c in candidates), key=len)
        fixed_tail = f"{question}Hyperparameter configuration: {longest}\n{self._answer_label()}:"
        pool = self._surrogate_examples(examples, history)
        rows, omitted = self._rows(pool, history, self._sur_row, SYSTEM_PROMPT, head + fixed_tail)
        # One shared prefix for every candidate, so the server's prompt cache reuses it.
        prefix = head + "".join(self._sur_row(e) for e in rows) + omitted_line(omitted) + question
        for i, c in enumerate(candidates):
            configuration = config_text(c.config, self.names)
            prompt = f"{prefix}Hyperparameter configuration: {configuration}\n{self._answer_label()}:"
            reply = self.client.chat(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                schema=self._surrogate_schema(), n=self.n_samples, temperature=self.surrogate_temperature,
                top_p=self.top_p, seed=llm_seed(self.seed, trial.number, f"surrogate{i}"),
                purpose=f"{self.method}:surrogate",
            )
            c.samples = [v for v in (self._read_prediction(t) for t in reply.texts) if v is not None]
            self._score(c, history)

    def _answer_label(self) -> str:
        return "Performance"

    def _read_prediction(self, text: str) -> float | None:
        obj = extract_json(text)
        if obj is not None:
            return extract_number(obj, (self.surrogate_key, "value", self.metric, "prediction"))
        match = _NUMBER.search(text or "")
        return extract_number(match.group(0), ()) if match else None

    def _score(self, c: Candidate, history: History) -> None:
        """Expected improvement over the best success, in the minimization sense."""
        if not c.samples:
            return
        best = history.best
        assert best is not None and best.value is not None
        sign = 1.0 if history.minimize else -1.0
        scores = [sign * v for v in c.samples]
        mu = sum(scores) / len(scores)
        sd = max(math.sqrt(sum((s - mu) ** 2 for s in scores) / len(scores)), 1e-5)
        c.mean, c.std = sign * mu, sd
        z = (sign * best.value - mu) / sd
        c.score = (sign * best.value - mu) * _norm_cdf(z) + sd * _norm_pdf(z)


def _norm_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _norm_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


class LlamboHubSampler(LlamboSampler):
    """The OptunaHub LLAMBO port as the reference study ran it (section 2.5), seeded and pinned: the
    first `n_initial` (2) trials are random, categorical parameters are sampled at random (seeded per
    trial) and the LLM sees only the numeric ones, the surrogate learns binary labels (top 20% of the
    successes = 1, the rest 0) and the candidate with the highest predicted P(good) is proposed,
    failed trials are hidden from the surrogate and instead listed (the last 10) as configurations to
    avoid, and the target is best - |alpha| * range with alpha 0.2."""

    method = "llambo-hub"
    default_alpha = 0.2
    default_samples = 5
    default_initial = 2
    surrogate_key = "label"
    top_fraction = 0.2

    def __init__(self, ctx: MethodContext, client: LLMClient | None = None) -> None:
        super().__init__(ctx, client)
        self.alpha = abs(self.alpha)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.space if p.kind != "categorical"]

    def fixed_values(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        categorical = [p.name for p in self.space if p.kind == "categorical"]
        return random_config(self.space, study, trial, self.seed, "categorical", names=categorical)

    def examples(self, history: History) -> list[Example]:
        ok = sorted(history.successes, key=history.score)
        n_good = max(1, math.ceil(self.top_fraction * len(ok)))
        good = {o.number for o in ok[:n_good]}
        return [Example(o, o.value, label=int(o.number in good)) for o in history.finished
                if o.ok and o.value is not None]

    def avoid_text(self, history: History) -> str:
        failed = history.failures[-10:]
        if not failed:
            return ""
        lines = "".join(f"- {config_text(o.config, self.space.names)}: {failure_text(o)}\n"
                        for o in failed)
        return f"\nThese configurations failed; avoid configurations similar to them:\n{lines}"

    def _surrogate_intro(self, history: History) -> str:
        return (f"The following are past evaluations: each hyperparameter configuration is labelled 1 if its "
                f"{self.metric} was among the best {self.top_fraction:.0%} of the evaluations, otherwise 0.\n")

    def _surrogate_question(self) -> str:
        return 'Classify the last configuration. Reply with only {"label": 1} or {"label": 0}.\n'

    def _surrogate_schema(self) -> dict[str, Any] | None:
        if not self.client.settings.json_schema:
            return None
        return {"type": "object", "properties": {"label": {"enum": [0, 1]}}, "required": ["label"],
                "additionalProperties": False}

    def _answer_label(self) -> str:
        return "Label"

    def _sur_row(self, e: Example) -> str:
        return f"Hyperparameter configuration: {config_text(e.obs.config, self.names)}\nLabel: {e.label}\n"

    def _score(self, c: Candidate, history: History) -> None:
        """P(good): the share of sampled labels that say 1."""
        labels = [min(1.0, max(0.0, v)) for v in c.samples]
        if labels:
            c.mean = c.score = sum(labels) / len(labels)
            c.std = math.sqrt(c.mean * (1 - c.mean))


# ---------------------------------------------------------------------------------------------------
@register("agent-hps", "LLM agent proposing the next configuration from the task, space and last evaluations")
def _agent_hps(ctx: MethodContext) -> AgentHPSSampler:
    require_space(ctx, AgentHPSSampler.method)
    return AgentHPSSampler(ctx)


@register("llambo", "LLAMBO (paper): LLM candidate generation towards a target + LLM surrogate with EI")
def _llambo(ctx: MethodContext) -> LlamboSampler:
    require_space(ctx, LlamboSampler.method)
    return LlamboSampler(ctx)


@register("llambo-hub", "LLAMBO (OptunaHub port): binary-label surrogate, random categoricals, failures avoided")
def _llambo_hub(ctx: MethodContext) -> LlamboHubSampler:
    require_space(ctx, LlamboHubSampler.method)
    return LlamboHubSampler(ctx)
