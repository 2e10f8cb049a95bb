"""The code agent: each trial an LLM edits the current best training script; the edit is checked,
run in isolation, and kept if it improves on the best, reverted otherwise.

Everything is recorded in the same Optuna study as the other methods: a trial's params are the
hyperparameter values of the script it ran (where they are literals inside the search space), and its
user attributes hold the description, the diff, the decision (baseline / kept / reverted / rejected /
failed) and why. The best script lives in the study's user attributes, so running again resumes from it.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import RandomSampler
from optuna.trial import TrialState

from centaur.agentcode.bwrap import sandbox_problem
from centaur.agentcode.edits import EditError, apply_edits, description_of, parse_reply, unified_diff
from centaur.agentcode.evaluator import (
    FUNCTION,
    MODEL_FILE,
    Evaluation,
    declared_evaluation,
    evaluate_out_of_process,
    validation_windows,
)
from centaur.agentcode.heldout import Split, build_split, masks, write_training_view
from centaur.agentcode.integrity import Protection, check_output, check_source
from centaur.agentcode.prompt import SYSTEM_PROMPT, Experiment, build_prompt
from centaur.agentcode.sandbox import gpu_visible, limits, model_process, network_isolation, run_isolated
from centaur.llm import LLMClient, LLMError, LLMUnavailable
from centaur.llm.local import LLMSetupError
from centaur.methods.base import CONFIG_ATTR, SOURCE_ATTR, MethodContext, MethodError
from centaur.methods.llm.common import client_for
from centaur.runner.outcome import classify
from centaur.runner.process import is_secret
from centaur.space.extract import find_assignments
from centaur.study import optuna_private as op
from centaur.study.loop import (
    Heartbeat,
    ProgressHook,
    StopFlag,
    TuneResult,
    open_study,
    record_result,
    study_budget,
)
from centaur.study.lost import close_lost_trials, owner_tag
from centaur.study.records import OWNER_ATTR, SAMPLER_ATTR, STARTED_ATTR, STUDY_PENALTY, summarize
from centaur.study.schema import (
    AGENT_DECISION_ATTR,
    AGENT_IMPROVEMENT_ATTR,
    AGENT_MARGIN_ATTR,
    AGENT_MARGIN_TRIAL_ATTR,
    AGENT_NOISE_ATTR,
    AGENT_NOISE_PAIRS_ATTR,
    AGENT_RULE_ATTR,
)
from centaur.tasks.base import TrialResult, TrialStatus
from centaur.tracking.callbacks import Callback, notify

log = logging.getLogger(__name__)

METHOD = "agent-code"
BEST_SOURCE_ATTR = "agent_code:best_source"  # study attribute: the current best script
BEST_VALUE_ATTR = "agent_code:best_value"
BEST_TRIAL_ATTR = "agent_code:best_trial"
DECISION_ATTR = AGENT_DECISION_ATTR
DESCRIPTION_ATTR = "agent_description"
DIFF_ATTR = "agent_diff"
REASON_ATTR = "agent_reason"
RETRY_OF_ATTR = "retry_of"  # set by the study on a queued retry of a lost trial
MAX_DIFF_CHARS = 20_000
DATA_DIR = "/data"  # where the training run sees its corpus folder (a neutral path)
BEST_RUNS_ATTR = "agent_code:best_runs"  # the values of the best script's runs (its value is their mean)
NOISE_PAIRS_ATTR, NOISE_ATTR, MARGIN_ATTR = AGENT_NOISE_PAIRS_ATTR, AGENT_NOISE_ATTR, AGENT_MARGIN_ATTR
OVERHEAD_ATTR = "agent_code:handover_overhead_s"  # the baseline's time past TIME_BUDGET to the hand-over
BATCH_SECONDS_ATTR = "agent_code:batch_seconds"  # the baseline's slowest batch in the model process
BATCH_FACTOR, BATCH_FLOOR_S = 4.0, 5.0  # later batches may take max(floor, factor x the baseline's)
RULE_ATTR = AGENT_RULE_ATTR
OPTIONS = frozenset(
    {"protect", "time_budget_name", "max_tokens", "temperature", "max_rejected_in_row", "isolate_network",
     "unsafe", "trust_script_metric", "grace_s", "max_processes", "read_only", "min_margin", "overrun_s",
     "batch_timeout_s"}
)
UNSAFE_HINT = "-o unsafe=true (CLI: --unsafe-agent-code)"
TRUST_HINT = "-o trust_script_metric=true (CLI: --trust-script-metric)"


RULE = ("an edit is run again when its first run beats the best by more than the margin, and kept when the mean "
        "of its two runs does; margin = max(2 x noise_sd, min_margin x |baseline|), noise_sd = sqrt(mean(d^2) / 2) "
        "over the differences d of pairs of runs of one script (the baseline is run twice)")


def noise_sd(pairs: list[list[float]]) -> float:
    """The standard deviation of one run, from pairs of runs of the same script: sqrt(mean(d^2) / 2)."""
    d2 = [(a - b) ** 2 for a, b in pairs]
    return math.sqrt(sum(d2) / len(d2) / 2) if d2 else 0.0


def same_program(a: str, b: str) -> bool:
    """Whether two scripts are the same program: equal ASTs once docstrings (and other bare string
    statements) are dropped. Comments and formatting are not in the AST."""

    def canonical(source: str) -> str:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            for name in ("body", "orelse", "finalbody"):
                body = getattr(node, name, None)
                if isinstance(body, list):
                    kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                    and isinstance(s.value.value, str))]
                    setattr(node, name, kept or [ast.Pass()])
        return ast.dump(tree)

    try:
        return canonical(a) == canonical(b)
    except SyntaxError:
        return False


def _flag(value: Any) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


class AgentCodeError(MethodError):
    """agent-code cannot run as asked (not a script task, bad option, too many rejected edits)."""


@dataclass
class AgentOptions:
    protect: list[str] = field(default_factory=list)  # extra functions or constants the agent may not touch
    time_budget_name: str = "TIME_BUDGET"
    max_tokens: int | None = None  # for the reply; None: max(llm.max_tokens, 1024) within the context
    temperature: float = 0.7
    max_rejected_in_row: int = 10  # rejected edits cost no budget: stop a model that never gets one through
    isolate_network: bool = True  # unsafe runs only: the sandbox always has no network
    unsafe: bool = False  # run edited code without the bubblewrap sandbox (the user's explicit choice)
    trust_script_metric: bool = False  # accept a metric the edited program prints itself (no declared evaluation)
    grace_s: float | None = None  # the run is stopped at TIME_BUDGET + grace; None: max(30 s, budget / 2)
    max_processes: int | None = None  # processes + threads of one run; None: sandbox.MAX_PROCESSES
    read_only: list[str] = field(default_factory=list)  # more host paths the run may read (data sets)
    min_margin: float = 0.01  # the least improvement kept, relative to the baseline's value
    overrun_s: float | None = None  # hand-over later than the baseline's by this is flagged; None: max(3, budget/10)
    batch_timeout_s: float = 60.0  # the model process's limit per batch (load the model, one forward)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> AgentOptions:
        unknown = set(options) - OPTIONS
        if unknown:
            raise AgentCodeError(f"agent-code: unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
        out = cls()
        try:
            if "protect" in options:
                value = options["protect"]
                out.protect = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
            if "time_budget_name" in options:
                out.time_budget_name = str(options["time_budget_name"])
            if options.get("max_tokens") is not None:
                out.max_tokens = int(options["max_tokens"])
            if "temperature" in options:
                out.temperature = float(options["temperature"])
            if "max_rejected_in_row" in options:
                out.max_rejected_in_row = int(options["max_rejected_in_row"])
            for name in ("isolate_network", "unsafe", "trust_script_metric"):
                if name in options:
                    setattr(out, name, _flag(options[name]))
            if options.get("grace_s") is not None:
                out.grace_s = float(options["grace_s"])
                if not out.grace_s >= 0:
                    raise ValueError("grace_s must be >= 0")
            if options.get("max_processes") is not None:
                out.max_processes = int(options["max_processes"])
            for name in ("min_margin", "overrun_s", "batch_timeout_s"):
                if options.get(name) is not None:
                    setattr(out, name, float(options[name]))
                    if not getattr(out, name) >= 0 or (name == "batch_timeout_s" and not out.batch_timeout_s > 0):
                        raise ValueError(f"{name} must be {'> 0' if name == 'batch_timeout_s' else '>= 0'}, got "
                                         f"{options[name]!r}")
            if "read_only" in options:
                value = options["read_only"]
                out.read_only = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [
                    str(v) for v in value]
        except (TypeError, ValueError) as e:
            raise AgentCodeError(f"agent-code: bad option value: {e}") from None
        return out


@dataclass
class Candidate:
    """What one LLM turn produced."""

    description: str
    source: str | None = None  # the edited script; None when the edit was unusable
    reason: str | None = None  # why it was rejected before running
    diff: str = ""
    llm: dict[str, Any] = field(default_factory=dict)


class CodeAgent:
    """One worker of the code agent on one script task and one study."""

    def __init__(
        self,
        task: Any,
        study: optuna.Study,
        client: LLMClient,
        *,
        run_dir: Path,
        options: AgentOptions,
        penalty: float = 100.0,
        seed: int = 0,
        storage: str | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.task = task
        self.callbacks = list(callbacks)
        self.study = study
        self.client = client
        self.run_dir = Path(run_dir)
        self.options = options
        self.penalty = penalty
        self.seed = seed
        self.storage = storage
        self.original = task.script.read_text(encoding="utf-8")
        self.protection = self._protection()
        self.modules = sorted(p.stem for p in task.script.parent.glob("*.py") if p != task.script)
        self.evaluation: Evaluation | None = declared_evaluation(task.script)
        self._split: Split | None = None  # agent-code's split of the corpus (the held-out part stays here)
        self._view: Path | None = None  # the training run's corpus folder, temporary

    # -- setup -----------------------------------------------------------------------------------
    def _protection(self) -> Protection:
        tree_defs = {a.name for a in find_assignments(self.original)}
        functions = {
            n.name for n in ast.walk(ast.parse(self.original)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        unknown = [p for p in self.options.protect if p not in functions and p not in tree_defs]
        if unknown:
            raise AgentCodeError(f"agent-code: protect names {unknown} are neither functions nor constants of "
                                 f"{self.task.script.name}")
        constants = [n for n in self.task.config.exclude if n in tree_defs]
        constants += [p for p in self.options.protect if p not in functions]
        budget = self.task.space.constants.get(self.options.time_budget_name)
        siblings = {p.stem for p in self.task.script.parent.glob("*.py") if p != self.task.script}
        return Protection.for_script(
            self.original,
            metric=self.task.metric,
            constants=constants,
            functions=[p for p in self.options.protect if p in functions],
            modules=siblings,
            budget_names=[self.options.time_budget_name],
            time_budget=float(budget) if isinstance(budget, (int, float)) else None,
        )

    @property
    def best_source(self) -> str:
        return self.study.user_attrs.get(BEST_SOURCE_ATTR, self.original)

    @property
    def best_value(self) -> float | None:
        value = self.study.user_attrs.get(BEST_VALUE_ATTR)
        return float(value) if value is not None else None

    # -- the loop --------------------------------------------------------------------------------
    def run(self, *, budget_s: float | None, n_trials: int | None, progress: ProgressHook | None = None
            ) -> TuneResult:
        check_can_run(self.options, self.task)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lost = close_lost_trials(self.study)
        if lost:
            log.warning("closed %d trial(s) of dead workers as lost: %s", len(lost), lost)
        if self.options.unsafe:
            log.warning("agent-code: running edited scripts WITHOUT the sandbox (unsafe=true): they can read "
                        "every file you can, and the study storage")
            if self.options.isolate_network:
                _, warning = network_isolation()
                if warning:
                    log.warning("agent-code: %s", warning)
        if self.evaluation is not None:
            log.info("agent-code: the metric is computed by the tuner outside the edited program (%s handed "
                     "over to a separate model process)", FUNCTION)
        elif self.options.trust_script_metric:
            log.warning("agent-code: the metric is what the edited program prints; it is protected only by the "
                        "sandbox and the AST checks (trust_script_metric=true)")
        self._prepare_data()
        try:
            return self._loop(budget_s=budget_s, n_trials=n_trials, progress=progress)
        finally:
            self._cleanup()

    def _loop(self, *, budget_s: float | None, n_trials: int | None, progress: ProgressHook | None) -> TuneResult:
        stop = StopFlag()
        summary = summarize(self.study)
        if progress:
            progress.on_start(summary)
        started, rejected_in_row, reason = 0, 0, "budget spent"
        with stop.installed():
            while True:
                if budget_s is not None and summary.used_s >= budget_s:
                    reason = "budget spent"
                    break
                if n_trials is not None and started >= n_trials:
                    reason = f"{n_trials} trials run"
                    break
                if stop.requested:
                    reason = "stopped by signal"
                    break
                if rejected_in_row >= self.options.max_rejected_in_row > 0:
                    reason = (f"{rejected_in_row} edits in a row were rejected before running; check the model "
                              "and the LLM log, or raise --option max_rejected_in_row")
                    break
                decision = self.step(progress)
                rejected_in_row = rejected_in_row + 1 if decision == "rejected" else 0
                started += 1
                summary = summarize(self.study)
                if progress:
                    progress.on_trial_end(self.study.get_trials(deepcopy=False)[-1], summary)
        if progress:
            progress.on_stop(reason, summary)
        return TuneResult(self.study, summary, reason)

    def step(self, progress: ProgressHook | None = None) -> str:
        """One trial: the baseline if it has not run yet, else one edit. Returns the decision."""
        waiting = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
        t0 = time.perf_counter()
        baseline = bool(waiting) and waiting[0].user_attrs.get(SOURCE_ATTR) == "baseline"
        if baseline:
            candidate = Candidate("baseline: the unedited script", source=self.original)
        elif waiting:  # the study queued a retry of a trial whose worker died: run that edit again
            candidate = self._retry(waiting[0].user_attrs.get(RETRY_OF_ATTR))
        else:
            candidate = self.propose()
        trial = self._ask(candidate.source or self.best_source, enqueue=not waiting)
        sampler_s = time.perf_counter() - t0
        attrs = {
            OWNER_ATTR: owner_tag(), STARTED_ATTR: time.time(), SAMPLER_ATTR: sampler_s,
            SOURCE_ATTR: "baseline" if baseline else METHOD, DESCRIPTION_ATTR: candidate.description,
            DIFF_ATTR: candidate.diff[:MAX_DIFF_CHARS], **candidate.llm,
        }  # fmt: skip
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if progress:
            progress.on_trial_start(trial.number, trial.user_attrs.get(CONFIG_ATTR, {}))
        if candidate.source is None:
            result = TrialResult(TrialStatus.INVALID, error=candidate.reason)
            decision = "rejected"
        else:
            try:
                with Heartbeat(self.study, op.trial_id(trial)):
                    result, tampering, runs = self._runs(candidate.source, trial.number, baseline)
            except KeyboardInterrupt:
                record_result(self.study, trial, TrialResult(TrialStatus.LOST, error="interrupted"), self.penalty)
                raise
            decision = self._decide(result, tampering, baseline, runs)
            if runs:
                trial.set_user_attr("agent_runs", runs)
            if not baseline and result.status is TrialStatus.OK and not tampering and self.best_value is not None:
                trial.set_user_attr(AGENT_MARGIN_TRIAL_ATTR, self.margin())
                trial.set_user_attr(AGENT_IMPROVEMENT_ATTR, self.best_value - float(result.value))
            if tampering:
                result = TrialResult(TrialStatus.INVALID, cost_s=result.cost_s, wall_s=result.wall_s,
                                     metrics=result.metrics, error="tampering: " + "; ".join(tampering),
                                     log_path=result.log_path, extra=result.extra)
        reason = redact(candidate.reason or result.error)
        trial.set_user_attr(DECISION_ATTR, decision)
        if reason:
            trial.set_user_attr(REASON_ATTR, reason[:1000])
        record_result(self.study, trial, result, self.penalty)
        if self.callbacks:  # trackers: one that fails is logged, never stops the study
            notify(self.callbacks, self.study, op.read_trial(self.study, trial))
        if decision in ("kept", "baseline") and result.status is TrialStatus.OK:
            self._keep(candidate.source or self.original, runs or [float(result.value)], trial.number)
        return decision

    # -- noise: an edit is kept only when it beats the best by more than two runs differ ------------
    def _runs(self, source: str, number: int, baseline: bool) -> tuple[TrialResult, list[str], list[float]]:
        """Run the script; run it again when it is the baseline (the noise of honest runs) or when its
        first run beats the best by more than the margin (the confirmation). The trial's value is the mean
        of its runs; `runs` holds them (one run that could not be repeated is never kept)."""
        first, tampering = self._evaluate(source, number)
        if first.status is not TrialStatus.OK or tampering or first.value is None:
            return first, tampering, []
        runs = [float(first.value)]
        if not baseline and not runs[0] < self._best_mean() - self.margin():
            return first, tampering, runs
        again, more = self._evaluate(source, number, run=1)
        cost = first.cost_s + again.cost_s
        if baseline:  # both runs ran under the baseline's generous limits; the slower sets the reference
            self._baseline_times(first, again if again.status is TrialStatus.OK and not more else first)
        if more:
            return replace(again, cost_s=cost, wall_s=cost), more, runs
        if again.status is not TrialStatus.OK or again.value is None:
            extra = {**first.extra, "rerun_status": again.status.value, "rerun_error": again.error}
            return replace(first, cost_s=cost, wall_s=cost, extra=extra), [], runs
        runs.append(float(again.value))
        self._add_noise_pair(runs[0], runs[1])
        mean = sum(runs) / len(runs)
        return replace(first, value=mean, cost_s=cost, wall_s=cost, metrics={**first.metrics, self.task.metric: mean},
                       extra={**first.extra, "runs": runs}), [], runs

    def _baseline_times(self, first: TrialResult, again: TrialResult) -> None:
        """The baseline's hand-over overrun and slowest batch (the slower of its runs): what later edits are
        held to."""
        for key, attr in (("handover_overrun_s", OVERHEAD_ATTR), ("max_batch_seconds", BATCH_SECONDS_ATTR)):
            if key in first.extra and key in again.extra:
                self.study.set_user_attr(attr, max(float(first.extra[key]), float(again.extra[key])))

    def batch_timeout(self) -> float:
        """The model process's limit per batch: `batch_timeout_s` for the baseline, then max(5 s, 4 x the
        baseline's slowest batch) within it. Work at load time or in the forward is bounded by it."""
        known = self.study.user_attrs.get(BATCH_SECONDS_ATTR)
        if known is None:
            return self.options.batch_timeout_s
        return min(self.options.batch_timeout_s, max(BATCH_FLOOR_S, BATCH_FACTOR * float(known)))

    def _best_mean(self) -> float:
        best = self.best_value
        return math.inf if best is None else best

    def _add_noise_pair(self, a: float, b: float) -> None:
        pairs = [list(p) for p in self.study.user_attrs.get(NOISE_PAIRS_ATTR, [])] + [[a, b]]
        self.study.set_user_attr(NOISE_PAIRS_ATTR, pairs)
        self.study.set_user_attr(NOISE_ATTR, noise_sd(pairs))
        self.study.set_user_attr(MARGIN_ATTR, self.margin())
        self.study.set_user_attr(RULE_ATTR, RULE)

    def margin(self) -> float:
        """max(2 x the noise of one run, min_margin x |baseline|): the difference of a mean of two runs and
        the best's mean of two has the standard deviation of one run."""
        sd = self.study.user_attrs.get(NOISE_ATTR)
        base = self._baseline_value()
        floor = self.options.min_margin * abs(base) if base is not None else 0.0
        return max(2.0 * float(sd) if sd is not None else 0.0, floor)

    def _baseline_value(self) -> float | None:
        for t in self.study.get_trials(deepcopy=False):
            ok = t.value is not None and t.user_attrs.get("status") == "ok"
            if ok and t.user_attrs.get(DECISION_ATTR) == "baseline":
                return float(t.value)
        return self.best_value

    def _retry(self, number: Any) -> Candidate:
        lost = next((t for t in self.study.get_trials(deepcopy=False) if t.number == number), None)
        path = self.run_dir / "trials" / f"{number:05d}" / self.task.script.name if isinstance(number, int) else None
        if lost is None or path is None or not path.is_file():
            return Candidate(f"retry of lost trial {number}", reason="edit: the lost trial's script is gone")
        source = path.read_text(encoding="utf-8")
        description = f"{lost.user_attrs.get(DESCRIPTION_ATTR, '')} (retry of lost trial {number})"
        try:
            problems = check_source(self.original, source, self.protection)
        except SyntaxError as e:
            problems = [f"syntax: {e.msg}"]
        if problems:
            return Candidate(description, reason="tampering: " + "; ".join(problems))
        return Candidate(description, source=source, diff=unified_diff(self.best_source, source, path.name))

    # -- one LLM turn ----------------------------------------------------------------------------
    def propose(self) -> Candidate:
        best = self.best_source
        budget = self.client.settings.context_tokens - self._max_tokens()
        prompt = build_prompt(
            script=best,
            script_name=self.task.script.name,
            task_description=self.task.describe(),
            metric=self.task.metric,
            best_value=self.best_value,
            history=self.history(),
            protected=self.protection.describe(),
            protected_functions=sorted(self.protection.functions),
            count_tokens=lambda text: self.client.counter.count_messages(
                [{"content": SYSTEM_PROMPT}, {"content": text}]
            ) + 64,
            budget_tokens=budget,
        )
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        number = len(self.study.get_trials(deepcopy=False))
        with self.client.track(trial=number, method=METHOD) as tracker:
            try:
                reply = self.client.chat(messages, temperature=self.options.temperature,
                                         max_tokens=self._max_tokens(), seed=self.seed * 100_003 + number,
                                         purpose="agent-code")
                text, error = reply.text, None
            except (LLMSetupError, LLMUnavailable):
                raise  # nothing to record: the study resumes once the endpoint is back
            except LLMError as e:
                text, error = "", f"{type(e).__name__}: {e}"
        llm = {"llm_calls": tracker.n_calls, "llm_seconds": round(tracker.seconds, 4),
               "llm_prompt_tokens": tracker.prompt_tokens, "llm_completion_tokens": tracker.completion_tokens,
               "llm_reply": text[:4000]}
        if error:
            return Candidate("(LLM request failed)", reason=f"llm: {error}"[:1000], llm=llm)
        return self.candidate(text, llm)

    def candidate(self, text: str, llm: dict[str, Any] | None = None) -> Candidate:
        """Turn a reply into a checked candidate script (or a rejection with its reason)."""
        llm = llm or {}
        best = self.best_source
        try:
            proposal = parse_reply(text)
            source = apply_edits(best, proposal.edits)
        except EditError as e:
            description = description_of(text)
            return Candidate(description, reason=f"edit: {e}", llm=llm)
        diff = unified_diff(best, source, self.task.script.name)
        if source == best:
            return Candidate(proposal.description, reason="edit: the edit changes nothing", diff=diff, llm=llm)
        try:
            problems = check_source(self.original, source, self.protection)
        except SyntaxError as e:
            return Candidate(proposal.description, reason=f"syntax: line {e.lineno}: {e.msg}", diff=diff, llm=llm)
        if same_program(source, best):
            return Candidate(proposal.description, reason="edit: the edit changes only comments, docstrings or "
                             "formatting: the program is the same", diff=diff, llm=llm)
        if problems:
            return Candidate(proposal.description, reason="tampering: " + "; ".join(problems), diff=diff, llm=llm)
        return Candidate(proposal.description, source=source, diff=diff, llm=llm)

    def _max_tokens(self) -> int:
        settings = self.client.settings
        want = self.options.max_tokens or max(settings.max_tokens, 1024)
        return max(64, min(want, settings.context_tokens // 2))

    # -- running and deciding --------------------------------------------------------------------
    def time_limit(self) -> tuple[float | None, float | None]:
        """(the stop the parent sets from outside, the grace in it): TIME_BUDGET + grace, within the
        task's trial timeout; without a budget, the trial timeout alone."""
        timeout = self.task.trial_timeout_s
        budget = self.protection.time_budget
        if budget is None:
            return timeout, None
        grace = self.options.grace_s if self.options.grace_s is not None else max(30.0, 0.5 * budget)
        stop = budget + grace
        return (min(stop, timeout) if timeout else stop), grace

    def _data_paths(self) -> tuple[list[Path], dict[str, str]]:
        """Host paths the run may read besides the task's files, and environment that points at them:
        `read_only`, and the bundled task's corpus cache (prepare.py reads $CENTAUR_DATA_DIR)."""
        paths = [Path(p).expanduser() for p in self.options.read_only]
        env: dict[str, str] = {}
        prepare = self.task.script.parent / "prepare.py"
        if prepare.is_file() and "CENTAUR_DATA_DIR" in prepare.read_text(encoding="utf-8", errors="replace"):
            root = self.task.extra_env.get("CENTAUR_DATA_DIR") or os.environ.get("CENTAUR_DATA_DIR")
            data = Path(root).expanduser() if root else Path.home() / ".cache" / "centaur" / "gpt"
            paths.append(data)
            env["CENTAUR_DATA_DIR"] = str(data.resolve())
        return paths, env

    def _prepare_data(self) -> None:
        """The bundled task builds its corpus on first use; in the sandbox its cache is read-only, so the
        (trusted) original prepare.py builds it here first."""
        prepare = self.task.script.parent / "prepare.py"
        paths, env = self._data_paths()
        if self.options.unsafe or "CENTAUR_DATA_DIR" not in env or not prepare.is_file():
            return
        data = Path(env["CENTAUR_DATA_DIR"])
        if (data / "stdlib" / "meta.json").is_file() or any(data.glob("*/meta.json")):
            return
        code = "import prepare, sys; prepare.ensure_corpus()"
        subprocess.run([sys.executable, "-c", code], cwd=prepare.parent, check=False, timeout=600,
                       env={**os.environ, "CENTAUR_DATA_DIR": str(data), "PYTHONPATH": str(prepare.parent)})

    def _hidden_paths(self) -> list[Path]:
        """What must not be in the view even where it lies inside a path that is (the task folder)."""
        hidden = [self.run_dir, Path.home()]
        if self.storage and self.storage.startswith("sqlite:///"):
            db = Path(self.storage[len("sqlite:///"):])
            hidden += [db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal")]
        elif self.storage and self.storage.startswith("journal:"):
            hidden.append(Path(self.storage[len("journal:"):]).expanduser())
        return hidden

    def _split_view(self) -> tuple[Split, Path]:
        """Agent-code's split of the corpus (heldout.py) and the folder the training run reads it from,
        built once per run of the agent in a temporary folder (a neutral path, outside the run directory)."""
        if self._split is None:
            real = Path(self._data_paths()[1]["CENTAUR_DATA_DIR"])
            self._split = build_split(real, self._corpus())
            self._view = Path(tempfile.mkdtemp(prefix="centaur-data-"))
            write_training_view(self._split, self._corpus(), self._view)
        assert self._view is not None
        return self._split, self._view

    def _cleanup(self) -> None:
        if self._view is not None:
            shutil.rmtree(self._view, ignore_errors=True)
            self._view, self._split = None, None

    def _evaluate(self, source: str, number: int, run: int = 0) -> tuple[TrialResult, list[str]]:
        """One run of `source`, in a staging folder outside the run directory (nothing the sandbox sees
        names it); its outputs are then moved to trials/NNNNN (trials/NNNNN/runR for a repeated run)."""
        trial_dir = self.run_dir / "trials" / f"{number:05d}"
        if run:
            trial_dir = trial_dir / f"run{run}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / self.task.script.name).write_text(source, encoding="utf-8")
        stage = Path(tempfile.mkdtemp(prefix="centaur-trial-"))
        try:
            work_copy = stage / self.task.script.name
            work_copy.write_text(source, encoding="utf-8")
            result, tampering = self._run_staged(work_copy, trial_dir)
        finally:
            out = trial_dir / "out"
            if out.exists():
                shutil.rmtree(out, ignore_errors=True)
            with contextlib.suppress(OSError):
                shutil.move(str(stage / "out"), str(out))
            shutil.rmtree(stage, ignore_errors=True)
        return result, tampering

    def _run_staged(self, work_copy: Path, trial_dir: Path) -> tuple[TrialResult, list[str]]:
        task = self.task
        runner = task.config.runner
        timeout, grace = self.time_limit()
        read_only, data_env = self._data_paths()
        hidden = self._hidden_paths()
        mapped: list[tuple[Path, str]] = []
        declared = self.evaluation is not None and "CENTAUR_DATA_DIR" in data_env
        if declared:
            # The training run sees the training split and a placeholder for the held-out split; the
            # held-out packages are hidden in every Python installation of the view.
            real = Path(data_env["CENTAUR_DATA_DIR"])
            split, view = self._split_view()
            read_only = [p for p in read_only if p.resolve() != real.resolve()]
            hidden += [real, *masks(split.held_out_names)]
            if self.options.unsafe:
                data_env = {**data_env, "CENTAUR_DATA_DIR": str(view)}
            else:
                mapped.append((view, DATA_DIR))
                data_env = {**data_env, "CENTAUR_DATA_DIR": DATA_DIR}
        proc = run_isolated(
            work_copy,
            task_dir=task.script.parent,
            log_path=trial_dir / "trial.log",
            out_dir=work_copy.parent / "out",
            timeout_s=timeout,
            memory_cap_bytes=runner.memory_cap_bytes,
            gpu_memory_fraction=runner.gpu_memory_fraction,
            extra_env={**task.extra_env, **data_env},
            isolate_network=self.options.isolate_network,
            metric_keys=self.protection.witnessed,
            modules=self.modules,
            sandbox=not self.options.unsafe,
            read_only=read_only,
            hidden=hidden,
            **({"max_processes": self.options.max_processes} if self.options.max_processes else {}),
            handover=FUNCTION if self.evaluation is not None else None,
            mapped=mapped,
        )
        if self.evaluation is not None:
            return self._evaluate_handed_over(proc, work_copy, trial_dir, hidden, {**task.extra_env, **data_env},
                                              timeout, grace)
        outcome = classify(proc.returncode, proc.output, task.metric, timed_out=proc.timed_out)
        tampering = [f"wrote {name}" for name in proc.tampered_files]
        if proc.limit:
            tampering.append(f"exceeded the sandbox's limits: {proc.limit}")
        if proc.timed_out and grace is not None and timeout is not None:
            outcome.error = (f"stopped by the runner at {timeout:.1f} s: TIME_BUDGET "
                             f"{self.protection.time_budget:g} s + {grace:g} s grace")
        if proc.token is not None and outcome.status is TrialStatus.OK:
            # Only the original metric statements can report: their lines carry the harness's token.
            trusted = dict(proc.reported or {})
            for key in self.protection.witnessed:
                if key not in trusted:
                    tampering.append(f"no '{key}:' line from the protected statement (the run ended before it, "
                                     "or printed the line itself)")
                elif not math.isclose(trusted[key], outcome.metrics.get(key, math.nan), rel_tol=0, abs_tol=0):
                    tampering.append(f"the output's last '{key}:' line ({outcome.metrics.get(key)}) is not what "
                                     f"the protected statement printed ({trusted[key]})")
            outcome.metrics.update(trusted)
            outcome.value = trusted.get(task.metric, outcome.value)
        ok = outcome.status is TrialStatus.OK
        # Time from outside: the charge is what the runner measured; what the script says is informational.
        result = TrialResult(
            outcome.status, outcome.value, cost_s=proc.wall_s, wall_s=proc.wall_s, metrics=outcome.metrics,
            error=redact(outcome.error), log_path=str(proc.log_path),
            extra={"returncode": proc.returncode, "network_isolated": proc.network_isolated,
                   "sandboxed": proc.sandboxed, "time_limit_s": timeout},
        )
        if ok:
            tampering += check_output(proc.output, outcome.metrics, proc.wall_s, self.protection,
                                      min_training_s=self.protection.time_budget)
        return result, tampering

    def _corpus(self) -> str:
        return self.task.extra_env.get("CENTAUR_GPT_CORPUS") or os.environ.get("CENTAUR_GPT_CORPUS") or "stdlib"

    def _evaluate_handed_over(self, proc: Any, work_copy: Path, trial_dir: Path, hidden: list[Path],
                              env: dict[str, str], timeout: float | None, grace: float | None
                              ) -> tuple[TrialResult, list[str]]:
        """The declared evaluation, outside the edited program: the training run handed its model over
        (or failed); the model process answers forward passes, the tuner computes the metric."""
        assert self.evaluation is not None
        task = self.task
        metric = task.metric
        tampering = [f"wrote {name}" for name in proc.tampered_files]
        if proc.limit:
            tampering.append(f"exceeded the sandbox's limits: {proc.limit}")
        model = work_copy.parent / "out" / MODEL_FILE
        extra = {"returncode": proc.returncode, "network_isolated": proc.network_isolated,
                 "sandboxed": proc.sandboxed, "time_limit_s": timeout, "evaluation": "out-of-process"}
        if proc.returncode != 0 or proc.timed_out or not model.is_file():
            outcome = classify(proc.returncode, proc.output, metric, timed_out=proc.timed_out)
            error = outcome.error
            if proc.timed_out and grace is not None and timeout is not None:
                error = (f"stopped by the runner at {timeout:.1f} s: TIME_BUDGET "
                         f"{self.protection.time_budget:g} s + {grace:g} s grace")
            status = outcome.status
            if status is TrialStatus.OK or (proc.returncode == 0 and not proc.timed_out):
                status, error = TrialStatus.INVALID, f"the run ended without handing a model to {FUNCTION}()"
            return TrialResult(status, cost_s=proc.wall_s, wall_s=proc.wall_s, error=redact(error),
                               log_path=str(proc.log_path), extra=extra), tampering
        tampering += self._overrun(proc, extra)
        seq_len, eval_bytes = self.evaluation.settings({**os.environ, **env})
        split, _ = self._split_view()
        windows = validation_windows(split.held_out, seq_len, eval_bytes)
        model_env = {k: v for k, v in env.items() if k != "CENTAUR_DATA_DIR"}
        command, penv = model_process(work_copy, model, task_dir=task.script.parent, extra_env=model_env,
                                      batch_timeout_s=self.batch_timeout(), modules=self.modules,
                                      sandbox=not self.options.unsafe, hidden=hidden)
        runner = task.config.runner
        scored = evaluate_out_of_process(
            command, windows, split.held_out, env=penv, cwd=Path("/"), log_path=trial_dir / "evaluation.log",
            timeout_s=float(task.trial_timeout_s or 600), preexec_fn=limits(runner.memory_cap_bytes, no_queues=True),
            device="cuda" if gpu_visible() else "cpu",
        )
        cost = proc.wall_s + scored.seconds
        extra.update({"evaluation_seconds": round(scored.seconds, 3), "scoring_seconds": round(scored.score_seconds, 3),
                      "max_batch_seconds": round(scored.max_batch_seconds, 3), "eval_batches": scored.batches,
                      "checked_windows": scored.checked_windows, "causal_max_diff": scored.max_causal_diff,
                      "causal_gain": scored.causal_gain, "repeat_max_diff": scored.max_repeat_diff})
        if scored.error or scored.value is None:
            error = redact(scored.error) or ""
            if "tampering:" in error:
                tampering.append(error.split("tampering:", 1)[1].strip())
            return TrialResult(TrialStatus.INVALID, cost_s=cost, wall_s=cost, error=error,
                               log_path=str(proc.log_path), extra=extra), tampering
        tampering += scored.tampering
        metrics = {metric: scored.value, "training_seconds": proc.wall_s, "evaluation_seconds": scored.seconds}
        return TrialResult(TrialStatus.OK, scored.value, cost_s=cost, wall_s=cost, metrics=metrics,
                           log_path=str(proc.log_path), extra=extra), tampering

    def _overrun(self, proc: Any, extra: dict[str, Any]) -> list[str]:
        """The hand-over came later after TIME_BUDGET than the baseline's (its start-up, warm-up and hand-over)
        plus `overrun_s`: the edit trained past the budget. The time is measured from the start of the edited
        code (the harness's mark), so the interpreter's start-up does not count."""
        budget = self.protection.time_budget
        if budget is None:
            return []
        since = proc.wall_s - (proc.exec_s or 0.0)
        over = since - budget
        extra["handover_overrun_s"] = round(over, 3)
        known = self.study.user_attrs.get(OVERHEAD_ATTR)
        if known is None:  # the baseline: it sets what start-up and hand-over take
            return []
        allowed = float(known) + self._overrun_allowance()
        extra["handover_allowed_s"] = round(allowed, 3)
        if over > allowed:
            return [f"trained past the budget: handed the model over {over:.1f} s after TIME_BUDGET ({budget:g} s) "
                    f"from the start of the edited code; the baseline needed {float(known):.1f} s, and "
                    f"{self._overrun_allowance():g} s more is allowed (-o overrun_s)"]
        return []

    def _overrun_allowance(self) -> float:
        if self.options.overrun_s is not None:
            return self.options.overrun_s
        return max(3.0, 0.1 * float(self.protection.time_budget or 0.0))

    def _decide(self, result: TrialResult, tampering: list[str], baseline: bool, runs: list[float]) -> str:
        """Kept: two runs whose mean beats the best's mean by more than the margin (RULE)."""
        if tampering:
            return "rejected"
        if result.status is not TrialStatus.OK:
            return "baseline" if baseline else "failed"
        if baseline:
            return "baseline"
        best = self.best_value
        if best is None:
            return "kept"
        confirmed = len(runs) >= 2 and result.value is not None and result.value < best - self.margin()
        return "kept" if confirmed else "reverted"

    def _keep(self, source: str, runs: list[float], number: int) -> None:
        self.study.set_user_attr(BEST_SOURCE_ATTR, source)
        self.study.set_user_attr(BEST_VALUE_ATTR, sum(runs) / len(runs))
        self.study.set_user_attr(BEST_RUNS_ATTR, runs)
        self.study.set_user_attr(MARGIN_ATTR, self.margin())
        self.study.set_user_attr(RULE_ATTR, RULE)
        self.study.set_user_attr(BEST_TRIAL_ATTR, number)
        path = self.run_dir / f"best_{self.task.script.name}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(source, encoding="utf-8")
        tmp.replace(path)

    def _ask(self, source: str, *, enqueue: bool) -> optuna.Trial:
        """A new trial whose params are the script's hyperparameter literals that lie in the space."""
        space = self.task.space
        try:
            found = {a.name: a.value for a in find_assignments(source)}
        except ValueError:
            found = {}
        config = {p.name: found[p.name] for p in space if p.name in found}
        params = {p.key: p.encode(config[p.name]) for p in space if p.name in config and p.contains(config[p.name])}
        dists = {p.key: p.distribution for p in space if p.key in params}
        if enqueue:
            self.study.enqueue_trial(params, skip_if_exists=False)
        else:  # a queued trial (baseline, retry): only its fixed params, never a sampled value
            queued = next(t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.WAITING)
            fixed = queued.system_attrs.get("fixed_params", {})
            dists = {k: v for k, v in dists.items() if k in fixed}
        trial = self.study.ask()
        for key, dist in dists.items():
            op.suggest_raw(trial, key, dist)  # fixed by the queue (the baseline's by open_study)
        trial.set_user_attr(CONFIG_ATTR, config)
        return trial

    # -- history ---------------------------------------------------------------------------------
    def history(self) -> list[Experiment]:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            if not t.state.is_finished() or DECISION_ATTR not in t.user_attrs:
                continue
            ok = t.user_attrs.get("status") == "ok" and t.value is not None and math.isfinite(t.value)
            detail = str(t.user_attrs.get(REASON_ATTR) or t.user_attrs.get("status") or "")
            rows.append(Experiment(t.number, str(t.user_attrs.get(DESCRIPTION_ATTR, "")),
                                   str(t.user_attrs[DECISION_ATTR]), t.value if ok else None, detail[:160]))
        return rows


def tune_agent_code(
    task: Any,
    *,
    storage: str,
    study_name: str,
    seed: int,
    budget_s: float | None,
    n_trials: int | None,
    penalty: float,
    run_dir: Path,
    options: dict[str, Any] | None = None,
    llm: Any = None,
    progress: ProgressHook | None = None,
    callbacks: Sequence[Callback] = (),
) -> TuneResult:
    """`centaur.tune(method="agent-code")`: open (or resume) the study and run the agent; `callbacks` (trackers
    included) get every finished trial, as in the study loop."""
    if not hasattr(task, "script") or not hasattr(task, "config"):
        raise AgentCodeError(
            f"agent-code edits a training script; task {getattr(task, 'name', task)!r} is not a script task"
        )
    opts = AgentOptions.parse(dict(options or {}))
    check_can_run(opts, task)
    ctx = MethodContext(space=task.space, seed=seed, run_dir=Path(run_dir), llm=llm)
    client = client_for(ctx)
    try:
        study = open_study(task, method=METHOD, seed=seed, budget_s=budget_s, storage=storage,
                           study_name=study_name, penalty=penalty, sampler=RandomSampler(seed=seed),
                           options=dict(options or {}))
        budget_s, penalty = study_budget(study), float(study.user_attrs[STUDY_PENALTY])
        agent = CodeAgent(task, study, client, run_dir=Path(run_dir), options=opts, penalty=penalty, seed=seed,
                          storage=storage if isinstance(storage, str) else None, callbacks=callbacks)
        return agent.run(budget_s=budget_s, n_trials=n_trials, progress=progress)
    finally:
        if client is not ctx.llm:
            client.close()


def declares_evaluation(task: Any) -> bool:
    """Whether the task's metric can be computed outside the edited program: its script has the bundled
    task's protected `evaluate_bpb(model, ...)` and a prepare.py that serves the split from
    $CENTAUR_DATA_DIR (evaluator.py); the tuner then scores the model the program hands over itself."""
    script = getattr(task, "script", None)
    return script is not None and declared_evaluation(Path(script)) is not None


def check_can_run(options: AgentOptions, task: Any = None) -> None:
    """Refuse to run model-written code where it cannot be sandboxed, or with a metric the program
    reports itself, unless the user said so explicitly."""
    if not options.unsafe:
        problem = sandbox_problem()
        if problem:
            raise AgentCodeError(
                f"agent-code runs every edited script in a bubblewrap sandbox, and it cannot make one here: "
                f"{problem}. Install bubblewrap, or accept running model-written code with only the static "
                f"checks, the scrubbed environment and the network namespace: {UNSAFE_HINT}")
    if not options.trust_script_metric and not declares_evaluation(task):
        raise AgentCodeError(
            "agent-code: this task declares no evaluation that the tuner can run outside the edited program, "
            "so the metric is the number the edited program prints; it is protected only by the sandbox and the "
            f"AST checks, which a determined edit may get around. Accept that with {TRUST_HINT}")


def redact(text: str | None) -> str | None:
    """`text` without the values of this process's secret variables (an error message of a run goes into
    the next prompt; a run must never carry a key there, even one it found some way to read)."""
    if not text:
        return text
    for name, value in os.environ.items():
        if is_secret(name) and len(value) >= 8 and value in text:
            text = text.replace(value, f"<{name} redacted>")
    return text
