"""`centaur`: CMA-ES runs every trial; on a share of them (after a warm-up) an LLM that sees CMA-ES's
state in the hyperparameters' own units proposes the configuration instead (reference study §2.9).

Fixes over the reference: the mean, spreads, named correlations and categorical probabilities are
shown (decoded from the unit box), the schedule's share is exact, the LLM's configuration is exactly
what runs and what CMA-ES is told (through the study, on any storage), missing keys come from CMA-ES's
own proposal, a proposal repeating an evaluated configuration is asked again once and then perturbed
within CMA-ES's distribution, a failed LLM point is told with a rank that cannot drag the search into
the failing region, and an unusable answer falls back to CMA-ES's own proposal, marked. A proposal
that the study's own trials predict to run out of memory is vetoed the same way (feasibility.py).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from centaur.llm import (
    LLMClient,
    LLMUnavailable,
    Proposal,
    ProposalError,
    cap_history,
    config_schema,
    validate_proposal,
)
from centaur.methods.base import (
    SOURCE_ATTR,
    MethodContext,
    MethodError,
    option_flag,
    register,
    require_space,
    set_trial_attr,
)
from centaur.methods.centaur.backends import CmaBackend, OptunaCmaBackend, OurCmaBackend
from centaur.methods.centaur.compact import RECENT, compact_prompt, prompt_profile
from centaur.methods.centaur.failure_regions import failure_summary
from centaur.methods.centaur.schedule import LLMSchedule
from centaur.methods.centaur.trust import SHARE_ATTR, turn_policy
from centaur.methods.cmaes.sampler import CMAES_OPTIONS, FAILURE_POLICIES, catcma_from_options
from centaur.methods.llm.common import (
    SYSTEM_PROMPT,
    History,
    LLMSampler,
    Observation,
    Outcome,
    fmt_number,
    llm_seed,
    omitted_line,
    outcome_text,
    read_history,
    space_text,
)
from centaur.study import optuna_private as op
from centaur.study.optuna_private import set_trial_attrs

DUPLICATE_POLICIES = ("reask", "perturb", "allow")
CMA_PROPOSAL_ATTR = "cma_proposal"


class CentaurSampler(LLMSampler):
    method = "centaur"
    default_fallback = "cmaes"
    turns = "LLM turns"  # only the schedule's LLM turns ask the endpoint
    options_known = LLMSampler.options_known | CMAES_OPTIONS | {
        "llm_ratio", "llm_warmup", "llm_trials", "cma_state", "backend", "failed_llm", "duplicates",
        "history", "best_k", "temperature", "prompt", "trust", "trust_floor", "trust_ceiling",
    }

    def __init__(self, ctx: MethodContext, client: LLMClient | None = None) -> None:
        super().__init__(ctx, client)
        o = self.options
        trials = o.get("llm_trials")
        if isinstance(trials, str):
            trials = [int(t) for t in trials.replace(",", " ").split()]
        self.schedule = LLMSchedule(float(o.get("llm_ratio", 0.3)), int(o.get("llm_warmup", 10)), trials)
        self.turn_policy = turn_policy(self.schedule, o, ctx.seed)  # adaptive trust unless -o trust=fixed
        self.prompt_profile = prompt_profile(o.get("prompt"), self.client.settings)
        self.show_state = option_flag(o.get("cma_state", True))
        self.duplicates = str(o.get("duplicates", "reask"))
        if self.duplicates not in DUPLICATE_POLICIES:
            raise MethodError(f"centaur: duplicates must be one of {DUPLICATE_POLICIES}, not {self.duplicates!r}")
        failed_llm = str(o.get("failed_llm", "worst"))
        if failed_llm not in FAILURE_POLICIES:
            raise MethodError(f"centaur: failed_llm must be one of {FAILURE_POLICIES}, not {failed_llm!r}")
        self.history_k = int(o.get("history", RECENT if self.prompt_profile == "compact" else 20))
        self.best_k = int(o.get("best_k", 5))
        self.temperature = float(o.get("temperature", 0.7))
        backend = str(o.get("backend", "cmaes"))
        self.cma: CmaBackend
        if backend == "cmaes":
            # Start at the script's defaults, the baseline that is known to run: from the centre of the
            # box (the study's start, `-o start=centre`) the first generations on the autoresearch space
            # mostly run out of memory, which costs the LLM turns their context.
            self.cma = OurCmaBackend(catcma_from_options(ctx, {"start": "defaults", **o}, external_failures=failed_llm))
        elif backend == "cmaes-optuna":
            if failed_llm != "penalty":
                failed_llm = "penalty"  # Optuna's CmaEsSampler reads the told value; documented in docs
            self.cma = OptunaCmaBackend(ctx.space, ctx.seed, o)
        else:
            raise MethodError(f"centaur: backend must be 'cmaes' or 'cmaes-optuna', not {backend!r}")
        self.failed_llm = failed_llm
        self.name = "centaur"

    @property
    def fallback_label(self) -> str:
        return "CMA-ES"

    def reseed_rng(self) -> None:
        super().reseed_rng()
        self.cma.reseed_rng()

    def _check_fallback(self) -> None:
        if self.fallback not in ("cmaes", "error"):
            raise MethodError(f"centaur: fallback is CMA-ES's own proposal ('cmaes') or 'error', not {self.fallback!r}")

    # -- Optuna interface ------------------------------------------------------------------------
    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        if trial.system_attrs.get("fixed_params"):
            return self.cma.fixed(study, trial)
        own, handle = self.cma.propose(study, trial)
        llm_turn, share = self.turn_policy.decide(study, trial)
        set_trial_attrs(op.storage_of(study), op.trial_id(trial), user_attrs={
            CMA_PROPOSAL_ATTR: own, **({SHARE_ATTR: round(share, 4)} if share is not None else {})})
        if not llm_turn:
            self.cma.accept_own(study, trial, handle)
            set_trial_attr(study, trial, SOURCE_ATTR, "cmaes")
            return self._params(own, search_space)
        history = read_history(study, self.space, exclude=trial.number)
        outcome, error, tracker, propose_s = self.ask_llm(
            trial, lambda: self.propose_llm(study, trial, history, own, handle)
        )
        if outcome is None:
            outcome = Outcome(config=own, source="llm-error" if self.llm_failure_is_fatal() else "llm-fallback:cmaes")
        if outcome.source == "llm":
            self.cma.accept_external(study, trial, handle)
        else:  # a fallback or a veto: CMA-ES's own proposal runs and is told as its own
            self.cma.accept_own(study, trial, handle)
        self._record(study, trial, outcome, tracker, error, propose_s)
        if outcome.source == "llm-error":  # as in LLMSampler: the limit of unreachable turns, or fallback=error
            assert error is not None
            if self.fallback != "error":
                raise LLMUnavailable(self.stop_message(error)) from error
            raise error
        return self._params(outcome.config, search_space)

    def _params(self, config: dict[str, Any], search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {k: v for k, v in self.space.encode(config).items() if k in search_space}

    # -- the LLM turn ----------------------------------------------------------------------------
    def propose_llm(self, study: optuna.Study, trial: FrozenTrial, history: History, own: dict[str, Any],
                    handle: Any) -> Outcome:
        space = self.space
        seen = history.seen(space)
        prompt = self.prompt(study, history, own, handle)
        attempts: list[int] = []

        def accept(obj: dict[str, Any]) -> tuple[Proposal, int | None]:
            attempts.append(1)
            proposal = validate_proposal(space, obj, fill_from=own, fill_source="CMA-ES's proposal")
            twin = seen.get(space.key_of(proposal.config))
            if twin is not None and self.duplicates == "reask" and len(attempts) == 1:
                raise ProposalError(
                    f"that configuration was already evaluated (trial {twin}) or is running; evaluating it again "
                    "wastes budget. Propose a different configuration."
                )
            return proposal, twin

        answer = self.client.ask_json(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            accept=accept,
            schema=config_schema(space) if self.client.settings.json_schema else None,
            purpose="centaur:propose",
            temperature=self.temperature,
            seed=llm_seed(self.seed, trial.number, self.method),
            reask_hint=f"Use exactly these keys: {', '.join(space.names)}, with values inside their ranges.",
        )
        proposal, twin = answer.value
        repairs = [f"first answer rejected: {p}" for p in answer.problems] + proposal.repairs
        config = proposal.config
        detail: dict[str, Any] = {"reasked": answer.reasked, "prompt_chars": len(prompt)}
        if twin is not None and self.duplicates != "allow":
            perturbed = self.cma.perturb(config, handle, lambda c: space.key_of(c) in seen or bool(space.violations(c)))
            if perturbed is not None:
                repairs.append(f"repeated trial {twin}: perturbed within CMA-ES's distribution")
                detail["duplicate_of"], detail["perturbed"] = twin, True
                config = perturbed
            else:
                detail["duplicate_of"] = twin
        p_oom = self.cma.predicted_oom(config)
        if p_oom is not None:
            # The study's own trials say this point runs out of memory: running it would spend the
            # start-up cost to learn what is already known. CMA-ES's proposal (drawn clear of it) runs.
            detail["vetoed"], detail["p_oom"] = config, round(p_oom, 3)
            return Outcome(config=own, source="llm-fallback:predicted-oom", raw=answer.raw,
                           repairs=[*repairs, f"predicted OOM (p={p_oom:.2f}): CMA-ES's proposal runs"],
                           detail=detail)
        return Outcome(config=config, raw=answer.raw, repairs=repairs, detail=detail)

    def prompt(self, study: optuna.Study, history: History, own: dict[str, Any], handle: Any) -> str:
        """Unchanging parts first, then the history window, then what changes every turn.

        A local model server reuses its cache for the longest prefix a prompt shares with the previous
        one, and a small model on a CPU spends most of a turn reading the prompt. So the parts come in
        the order they change: the task and space never; CMA-ES's distribution once per generation; the
        table of evaluations gains rows at its end, and its window starts at a multiple of `history`/2
        trials, so it only grows until it jumps by a block; everything after it changes every turn and
        is kept short. Most turns recompute only their new rows and the tail. Rows are table lines under
        one header with 4 significant digits, not JSON objects that repeat every key.
        """
        if self.prompt_profile == "compact":
            return compact_prompt(self, study, history, own, handle, recent=self.history_k)
        space, metric = self.space, self.metric
        direction = "lower is better" if history.minimize else "higher is better"
        head = [f"## Task\n{self.task_description}\n", f"## Search space\n{space_text(space)}\n"
                "Integers are rounded, powers of two snap to the nearest power, numbers are clipped to their "
                "range.\n", self._guidance() + "\n"]
        if self.show_state:
            view = self.cma.view(study, handle)
            state = view.text() if view is not None else "- CMA-ES has not completed a generation yet."
            head.append("## CMA-ES advisor\nA CMA-ES optimizer runs alongside you; its search distribution "
                        f"now is:\n{state}\n")
        header = (f"## Evaluations, oldest first ({metric}, {direction})\n"
                  f"columns: trial | {', '.join(space.names)} | result\n")
        ok = sorted(history.successes, key=history.score)[: self.best_k]
        failures = failure_summary(space, [o.config for o in history.finished], [o.status for o in history.finished])

        def footer(shown: set[int]) -> str:
            tail = []
            if self.show_state:
                tail.append(f"## CMA-ES's own proposal for this trial (same columns)\n{self.table_values(own)}\n")
            if ok:
                tail.append(self._best_text(ok, shown))
            tail.append(f"## Failures\n{failures}\n")
            return "\n".join(tail) + "\n" + self._footer(history)

        window = history.finished[block_start(len(history.finished), self.history_k):]
        best_rank = {o.number: i for i, o in enumerate(ok)}
        in_window = {o.number for o in window}
        budget = self.row_budget(SYSTEM_PROMPT, "\n".join(head), header, footer(in_window))
        # The best rows in the window are kept first, so the best list can point at them by number.
        rows, omitted = cap_history(window, render=self.table_row, budget_tokens=budget, counter=self.client.counter,
                                    rank=lambda o: best_rank.get(o.number, math.inf), last_k=None,
                                    best_k=len(in_window & best_rank.keys()))  # fmt: skip
        shown = {o.number for o in rows}
        omitted += len(history.finished) - len(window)
        table = "".join(self.table_row(o) + "\n" for o in rows) or "None yet.\n"
        return "\n".join(head) + "\n" + header + omitted_line(omitted) + table + "\n" + footer(shown)

    def _best_text(self, ok: list[Observation], shown: set[int]) -> str:
        """The best configurations: by number and value when their row is in the table (no need to read
        the same 14 values twice, every turn), in full otherwise."""
        refs = ", ".join(f"{o.number} ({o.value:.4g})" for o in ok if o.number in shown)
        full = [self.table_row(o) for o in ok if o.number not in shown]
        text = f"## Best {len(ok)} so far\n"
        if refs:
            text += f"Trials {refs}: rows in the table above.\n"
        if full:
            text += ("Not in the table" if refs else "Same columns") + ":\n" + "".join(r + "\n" for r in full)
        return text

    def table_values(self, config: dict[str, Any]) -> str:
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else fmt_number(v)
                         for v in (config[n] for n in self.space.names))

    def table_row(self, o: Observation) -> str:
        return f"{o.number} | {self.table_values(o.config)} | {outcome_text(o, self.metric)}"

    def _guidance(self) -> str:
        """What to do: the same on every turn, so it sits in the cached head, not in the tail."""
        return (
            "## What to do\nYou will see CMA-ES's state, the evaluations so far, and CMA-ES's own proposal; then "
            "propose the next configuration to evaluate. "
            + ("If CMA-ES's spreads are small, it has found a promising region: refine near its centre. If they "
               "are large, use your knowledge of training dynamics to pick a better point. " if self.show_state
               else "")
            + "Stay out of regions where trials ran out of memory. Do not repeat an evaluated configuration. "
            f"Use exactly these keys: {', '.join(self.space.names)}. "
            "Reply with only a JSON object mapping each key to its value."
        )

    def _footer(self, history: History) -> str:
        running = self.running_text(history)
        ask = "Now reply with the JSON object of the next configuration."
        return f"{running}\n{ask}" if running else ask


def block_start(n: int, k: int) -> int:
    """First row of the history window over `n` rows: at least the last `k` rows, starting at a multiple
    of k/2, so the window holds k to 1.5k rows and its start moves once every k/2 rows."""
    if k <= 0:
        return 0
    block = max(1, k // 2)
    return max(0, (n - k) // block * block)


@register("centaur", "CMA-ES (ours) whose state is shown to an LLM that proposes a share of the trials")
def _centaur(ctx: MethodContext) -> CentaurSampler:
    require_space(ctx, CentaurSampler.method)
    return CentaurSampler(ctx)



class NullCentaurSampler(CentaurSampler):
    """`centaur-null`, the control: Centaur's schedule, trust, duplicate handling, veto and records, but the
    "LLM" answers with CMA-ES's own proposal moved by a step drawn from CMA-ES's distribution (seeded by
    the trial, so a rerun proposes the same). It costs no LLM time and shows what perturbation alone
    does; the difference to `centaur` is what the LLM's knowledge adds."""

    method = "centaur-null"

    def propose_llm(self, study: optuna.Study, trial: FrozenTrial, history: History, own: dict[str, Any],
                    handle: Any) -> Outcome:
        space = self.space
        seen = history.seen(space)
        config = self.cma.perturb(own, handle, lambda c: space.key_of(c) in seen or bool(space.violations(c)),
                                  salt="centaur-null", fresh=True)
        if config is None:
            return Outcome(config=own, source="llm-fallback:cmaes", repairs=["no fresh perturbation: CMA-ES's own"],
                           detail={"null": True})
        detail: dict[str, Any] = {"null": True}
        p_oom = self.cma.predicted_oom(config)
        if p_oom is not None:
            detail["vetoed"], detail["p_oom"] = config, round(p_oom, 3)
            return Outcome(config=own, source="llm-fallback:predicted-oom", detail=detail,
                           repairs=[f"predicted OOM (p={p_oom:.2f}): CMA-ES's proposal runs"])
        return Outcome(config=config, detail=detail)


@register("centaur-null", "control for centaur: the same schedule, trust and veto, the LLM replaced by CMA-ES's "
          "proposal moved by a random step from CMA-ES's distribution (no LLM)")
def _centaur_null(ctx: MethodContext) -> CentaurSampler:
    require_space(ctx, NullCentaurSampler.method)
    return NullCentaurSampler(ctx)
