"""Library entry points: `centaur.tune(...)` and task resolution."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from centaur.methods.base import MethodContext, create_sampler, method_info
from centaur.paths import absolute_path, absolute_storage_url, study_dirname
from centaur.study.loop import DEFAULT_BUDGET_S, ProgressHook, TuneResult, open_study, run_worker, study_budget
from centaur.study.pruning import PrunerSettings, check_pruning, task_fidelity
from centaur.study.schema import STUDY_PENALTY
from centaur.study.storage import default_storage_url
from centaur.tasks.base import Task
from centaur.tasks.spec import BUNDLED_TASK, resolve_task, task_spec
from centaur.tracking import Callback, TrackingSettings, build_trackers
from centaur.units import parse_duration

DEFAULT_RUN_ROOT = Path("centaur-runs")
DEFAULT_METHOD = "gp"  # the best measured (README, docs/bench.md); a resumed study keeps its own
log = logging.getLogger(__name__)


def default_study_name(task: Task, method: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{task.name}-{method}-seed{seed}")


def existing_method(task: Task, seed: int, storage: str, study_name: str | None,
                    progress: ProgressHook | None = None) -> str | None:  # fmt: skip
    """The method of the study a run without `method` resumes: the named study's, or the one study of this
    task and seed under a default name (`gpt-tpe-seed0`); None when there is none (or several)."""
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):].partition("?")[0]).exists():
        return None
    import optuna

    from centaur.methods.base import available_methods
    from centaur.study.schema import STUDY_METHOD
    from centaur.study.storage import open_storage

    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(open_storage(storage))}
    if study_name is not None:
        found = summaries.get(study_name)
        return str(found.user_attrs[STUDY_METHOD]) if found and STUDY_METHOD in found.user_attrs else None
    ours = [(name, m) for m in available_methods() if (name := default_study_name(task, m, seed)) in summaries]
    if len(ours) != 1:
        return None
    name, method = ours[0]
    if method != DEFAULT_METHOD:
        _notify(progress, f"resuming study {name} with its own method, {method} (give --method to start another)")
    return method


def check_run_options(
    *, budget: float | str | None, penalty: float | None, workers: int, n_trials: int | None
) -> float | None:
    """Refuse option values that cannot mean anything, naming the option; returns the budget in seconds."""
    budget_s = None
    if budget is not None:
        try:
            budget_s = parse_duration(budget)
        except ValueError as e:
            raise ValueError(f"--budget: {e}") from None
        if not math.isfinite(budget_s) or budget_s <= 0:
            raise ValueError(f"--budget must be a positive duration such as 24h, 90m or 600s, got {budget!r}")
    if penalty is not None and not (isinstance(penalty, (int, float)) and math.isfinite(penalty)):
        raise ValueError(f"--penalty must be a finite number (what failed trials are told with), got {penalty!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"--n-trials must be a whole number of at least 1, got {n_trials!r}")
    return budget_s


def tune(
    task: Task | str | Path | None = None,
    *,
    method: str | None = None,
    budget: float | str | None = None,
    n_trials: int | None = None,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    run_dir: Path | str | None = None,
    penalty: float | None = None,
    method_options: dict[str, Any] | None = None,
    llm: Any = None,
    progress: ProgressHook | None = None,
    workers: int = 1,
    gpus: list[str] | None = None,
    keep_going: bool = False,
    pruner: str | PrunerSettings | dict[str, Any] | None = None,
    callbacks: Sequence[Callback] | None = None,
    tracking: TrackingSettings | dict[str, Any] | None = None,
) -> TuneResult:
    """Tune `task` with `method` until `budget` (seconds or "24h") of counted compute is spent.

    Running it again with the same storage and study name resumes the study: `budget` None keeps the
    study's budget (a new study: 24 h, or none when `n_trials` is given), a larger one extends it;
    `penalty` None keeps the study's (100). A resume with another script, space, method, options or
    seed is refused (StudyMismatch).
    `workers` > 1 starts that many worker processes on this machine against the one study (`gpus`: one
    GPU per worker, round robin); more machines join with `centaur worker` (see docs/deployment.md).
    The study stops early (HopelessStudy) when its baseline fails or trials keep failing the same way,
    unless `keep_going`.
    `pruner` stops bad trials early from the intermediate values the script prints (`[task] progress`):
    a name ("median", "percentile", "successive-halving", "hyperband", "wilcoxon"; default "none"), a
    dict {"kind": ..., "warmup": "60s", ...} or PrunerSettings (docs/pruning.md). It is part of what
    defines the study.
    `callbacks` are called as Optuna calls them, `callback(study, frozen_trial)`, after every finished
    trial (in this process: not with `workers` > 1). `tracking` logs every trial to MLflow and/or W&B
    ({"mlflow": URI, "wandb": PROJECT, ...}, or `[tracking]` of centaur.toml; centaur.tracking), in every
    worker. A callback or tracker that fails is logged and never stops the study.
    """
    budget_s = check_run_options(budget=budget, penalty=penalty, workers=workers, n_trials=n_trials)
    pruning = pruner_settings(pruner)
    task_arg, task = task, resolve_task(task)
    run_root = absolute_path(run_dir if run_dir is not None else DEFAULT_RUN_ROOT)
    if isinstance(storage, str):
        storage = absolute_storage_url(storage)
    storage = storage or default_storage_url(run_root)
    if method is None:  # a study that exists keeps its own method, whatever today's default is
        method = existing_method(task, seed, storage, study_name, progress) or DEFAULT_METHOD
    study_name = study_name or default_study_name(task, method, seed)
    trial_dir = run_root / study_dirname(study_name)
    config = getattr(task, "config", None)
    # centaur.toml's [methods.NAME] first, the command line's options over them.
    options = {**dict(getattr(config, "methods", {}).get(method, {})), **dict(method_options or {})}
    llm_arg = {k: v for k, v in llm.items() if k != "api_key"} if isinstance(llm, dict) else None
    if llm is None and config is not None:
        llm = config.llm
    if gpus and workers == 1 and len(gpus) > 1:
        workers = len(gpus)
    if gpus and workers == 1 and hasattr(task, "extra_env"):
        task.extra_env["CUDA_VISIBLE_DEVICES"] = gpus[0]  # one GPU: this process runs the trials itself
    from centaur.study.workers import check_parallel_method

    check_parallel_method(method, workers)
    tracked = _tracking_settings(tracking, config)
    trackers = build_trackers(tracked, trial_dir / "tracking")  # before the study: a missing package is named
    callbacks = list(callbacks or [])
    if callbacks and workers > 1:
        raise ValueError("callbacks run in this process: with workers > 1 use tracking (or [tracking] in "
                         "centaur.toml), which every worker builds for itself")  # fmt: skip
    pruning = with_task_fidelity(pruning, task)
    check_pruning(task, method, pruning, own_loop=method_info(method).own_loop)
    if method_info(method).own_loop:  # agent-code edits the script itself: its own loop, not a sampler
        from centaur.agentcode.loop import tune_agent_code

        return tune_agent_code(
            task, storage=storage, study_name=study_name, seed=seed, budget_s=budget_s, n_trials=n_trials,
            penalty=penalty, run_dir=trial_dir, options=options, llm=llm, progress=progress,
            callbacks=[*trackers, *callbacks],
        )  # fmt: skip
    ctx = MethodContext(
        space=task.space,
        seed=seed,
        options=options,
        task_description=task.describe(),
        penalty=penalty if penalty is not None else 100.0,
        run_dir=trial_dir,
        llm=llm,
    )
    sampler = create_sampler(method, ctx)
    try:
        notices: list[str] = []
        study = open_study(
            task,
            method=method,
            seed=seed,
            budget_s=budget_s,
            storage=storage,
            study_name=study_name,
            penalty=penalty,
            sampler=sampler,
            options=options,
            notices=notices,
            default_budget_s=DEFAULT_BUDGET_S if n_trials is None else None,  # --n-trials alone: no budget
            pruner=pruning,
        )
        for line in notices:
            _notify(progress, line)
        budget_s = study_budget(study)
        penalty = float(study.user_attrs[STUDY_PENALTY])
        if penalty != ctx.penalty:  # a resumed study keeps its own penalty: the sampler must tell the same one
            _close(sampler)
            ctx.penalty = penalty
            sampler = study.sampler = create_sampler(method, ctx)
        from centaur.study.workers import run_local_workers, store_settings

        spec = task_spec(task_arg)
        timeout = getattr(config, "runner", None)
        settings = {
            "task": spec,
            "method_options": options,
            "trial_timeout_s": getattr(timeout, "trial_timeout_s", None),
            "llm": llm_arg,  # never a key: workers read theirs from their own environment
            "keep_going": keep_going,
            "tracking": tracked.as_dict(),
        }
        store_settings(study, settings)  # what `centaur worker` needs to join this study
        if workers > 1:
            if spec is None:
                raise ValueError("--workers needs a task given by path or name ('gpt', 'surrogate'), not an object")
            return run_local_workers(
                workers, storage=storage, study_name=study_name, run_root=run_root, gpus=gpus, n_trials=n_trials,
                progress=progress, sampler=sampler,
            )  # fmt: skip
        return run_worker(
            task, study, run_dir=trial_dir, budget_s=budget_s, n_trials=n_trials, penalty=penalty, progress=progress,
            keep_going=keep_going, callbacks=[*trackers, *callbacks],
        )  # fmt: skip
    finally:
        _close(sampler)


def _tracking_settings(tracking: TrackingSettings | dict[str, Any] | None, config: Any) -> TrackingSettings:
    """`tracking` over centaur.toml's `[tracking]` (key by key)."""
    given = tracking.as_dict() if isinstance(tracking, TrackingSettings) else dict(tracking or {})
    base = dict(getattr(config, "tracking", {}) or {})
    return TrackingSettings.parse({**base, **given}, "tracking" if given else "[tracking]")


def pruner_settings(pruner: str | PrunerSettings | dict[str, Any] | None) -> PrunerSettings:
    """`tune(pruner=...)` as settings: None is "none"; a dict holds "kind" and the settings."""
    if isinstance(pruner, PrunerSettings):
        return pruner
    if isinstance(pruner, dict):
        given = dict(pruner)
        return PrunerSettings.parse(given.pop("kind", None), **given)
    return PrunerSettings.parse(pruner)


def with_task_fidelity(pruning: PrunerSettings, task: Any) -> PrunerSettings:
    """The task's `[task] fidelity` as the pruner's fidelity, when the pruner takes one and none was given."""
    name = task_fidelity(task)
    if name is None or pruning.fidelity is not None or not pruning.active or not pruning.takes("fidelity"):
        return pruning
    return dataclasses.replace(pruning, fidelity=name)


def _close(sampler: Any) -> None:
    close = getattr(sampler, "close", None)
    if callable(close):
        close()


def _notify(progress: ProgressHook | None, line: str) -> None:
    """A line the user should see before the run starts (a budget extended, a script changed)."""
    notice = getattr(progress, "on_notice", None)
    if callable(notice):
        notice(line)
    else:
        log.warning("%s", line)


__all__ = [
    "BUNDLED_TASK", "DEFAULT_METHOD", "DEFAULT_RUN_ROOT", "PrunerSettings", "check_run_options", "pruner_settings",
    "resolve_task", "tune",
]
