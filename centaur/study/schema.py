"""Every attribute key Centaur writes on Optuna studies and trials, in one place.

Method-private state (CMA-ES's pickled optimizer, SMAC's claims) keeps its keys beside its method; these
are the keys that more than one module reads or writes.
"""

from __future__ import annotations

# -- study user attributes ---------------------------------------------------------------------------
STUDY_METHOD = "method"
STUDY_SEED = "seed"
STUDY_BUDGET = "budget_s"  # the compute budget in seconds (absent: only --n-trials stops the study)
STUDY_TASK = "task"  # Task.name
STUDY_PENALTY = "penalty"  # the value failed trials are told with
STUDY_SPACE = "space"  # the space as a JSON object (SearchSpace.as_record), for people reading the storage
IDENTITY_ATTR = "identity"  # what defines the study (centaur.study.identity), checked on resume and join
SETTINGS_ATTR = "worker_settings"  # what a joining worker needs to rebuild the run
BENCH_COMPLETE_ATTR = "bench_complete"  # the study reached its budget under the bench harness
BENCH_SECONDS_ATTR = "bench_seconds"  # wall seconds the harness spent on the study

# -- trial user attributes ---------------------------------------------------------------------------
STATUS_ATTR = "status"  # TrialStatus value
TOLD_ATTR = "penalty"  # a failed trial (state FAIL): the value its method is told (methods/failure_view.py)
CONFIG_ATTR = "config"  # the configuration that ran, in real units
SOURCE_ATTR = "proposal_source"  # who proposed it: sampler name, "baseline", "llm", "llm-fallback", ...
COST_ATTR = "cost_s"  # what the trial counts against the budget
WALL_ATTR = "wall_s"
SAMPLER_ATTR = "sampler_s"  # seconds the method took to propose it
ALIVE_ATTR = "alive_at"  # the worker's last heartbeat
STARTED_ATTR = "started_at"
OWNER_ATTR = "owner"  # host, pid and process start time of the worker running it
ERROR_ATTR = "error"
# agent-code's decisions, read by the report
AGENT_DECISION_ATTR = "agent_decision"  # baseline, kept, reverted, rejected, failed
AGENT_MARGIN_TRIAL_ATTR = "agent_margin"  # the margin this trial's improvement had to beat
AGENT_IMPROVEMENT_ATTR = "agent_improvement"  # the best's value minus this trial's (its mean of runs)
AGENT_NOISE_ATTR = "agent_code:noise_sd"  # the standard deviation of one run, from pairs of runs
AGENT_NOISE_PAIRS_ATTR = "agent_code:noise_pairs"  # pairs of values of the same script run twice
AGENT_MARGIN_ATTR = "agent_code:margin"  # what an edit must improve on the best by to be kept
AGENT_RULE_ATTR = "agent_code:rule"  # the keep rule, in words
VERIFIED_ATTR = "verified"  # verified | unverified | overridden: whether the values recorded are those that ran
VERIFY_NOTE_ATTR = "verify_note"  # unverified: which names and why; overridden: what ran instead
LOG_ATTR = "log"
RETRY_OF_ATTR = "retry_of"  # a queued retry of a lost trial: that trial's number
RETRIES_ATTR = "retries"  # how many times this configuration was queued again after a loss

# LLM methods: one turn's record on the trial it proposed.
LLM_CALLS_ATTR = "llm_calls"
LLM_SECONDS_ATTR = "llm_seconds"
LLM_PROMPT_TOKENS_ATTR = "llm_prompt_tokens"
LLM_COMPLETION_TOKENS_ATTR = "llm_completion_tokens"
LLM_REPAIRS_ATTR = "llm_repairs"
LLM_ERROR_ATTR = "llm_error"
LLM_PROPOSAL_ATTR = "llm_proposal"
LLM_DETAIL_ATTR = "llm_detail"
