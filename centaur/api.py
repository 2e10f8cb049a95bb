"""Library entry points: `centaur.tune(...)` and task resolution."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from centaur.methods.base import MethodContext, create_sampler
from centaur.study.loop import ProgressHook, TuneResult, open_study, run_worker
from centaur.study.storage import default_storage_url
from centaur.tasks.base import Task
from centaur.units import parse_duration

BUNDLED_TASK = Path(__file__).resolve().parent / "tasks" / "gpt" / "train.py"
DEFAULT_RUN_ROOT = Path("centaur-runs")
DEFAULT_METHOD = "tpe"


def resolve_task(task: Task | str | Path | None) -> Task:
    """A Task object; `None` or "gpt" is the bundled CPU training task; "surrogate" or
    "surrogate:TRIALS.json" the surrogate of the reference study; anything else a script path."""
    from centaur.tasks.script import ScriptTask

    if task is None or str(task) == "gpt":
        return ScriptTask.from_script(BUNDLED_TASK)
    if isinstance(task, (str, Path)):
        text = str(task)
        if text == "surrogate" or text.startswith("surrogate:"):
            from centaur.surrogate.task import SurrogateTask

            path = text.split(":", 1)[1] if ":" in text else None
            return SurrogateTask.from_trials(path)
        return ScriptTask.from_script(Path(text))
    return task


def default_study_name(task: Task, method: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{task.name}-{method}-seed{seed}")


def tune(
    task: Task | str | Path | None = None,
    *,
    method: str = DEFAULT_METHOD,
    budget: float | str | None = "24h",
    n_trials: int | None = None,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    run_dir: Path | str | None = None,
    penalty: float = 100.0,
    method_options: dict[str, Any] | None = None,
    llm: Any = None,
    progress: ProgressHook | None = None,
    workers: int = 1,
    gpus: list[str] | None = None,
) -> TuneResult:
    """Tune `task` with `method` until `budget` (seconds or "24h") of counted compute is spent.

    Running it again with the same storage and study name resumes the study. `workers` > 1 starts that
    many worker processes on this machine against the one study (`gpus`: one GPU per worker, round robin);
    more machines join with `centaur worker` (see docs/deployment.md).
    """
    task_arg, task = task, resolve_task(task)
    budget_s = parse_duration(budget) if budget is not None else None
    study_name = study_name or default_study_name(task, method, seed)
    run_root = Path(run_dir) if run_dir is not None else DEFAULT_RUN_ROOT
    storage = storage or default_storage_url(run_root)
    trial_dir = run_root / study_name
    options = dict(method_options or {})
    llm_arg = {k: v for k, v in llm.items() if k != "api_key"} if isinstance(llm, dict) else None
    if llm is None and getattr(task, "config", None) is not None:
        llm = task.config.llm
    if gpus and workers == 1:
        workers = len(gpus)
    from centaur.study.workers import check_parallel_method

    check_parallel_method(method, workers)
    if method == "agent-code":  # edits the script itself: its own loop, not a sampler
        from centaur.agentcode.loop import tune_agent_code

        config_options = getattr(getattr(task, "config", None), "methods", {}).get(method, {})
        return tune_agent_code(
            task, storage=storage, study_name=study_name, seed=seed, budget_s=budget_s, n_trials=n_trials,
            penalty=penalty, run_dir=trial_dir, options={**config_options, **options}, llm=llm, progress=progress,
        )  # fmt: skip
    ctx = MethodContext(
        space=task.space,
        seed=seed,
        options=options,
        task_description=task.describe(),
        penalty=penalty,
        run_dir=trial_dir,
        llm=llm,
    )
    sampler = create_sampler(method, ctx)
    try:
        study = open_study(
            task,
            method=method,
            seed=seed,
            budget_s=budget_s,
            storage=storage,
            study_name=study_name,
            penalty=penalty,
            sampler=sampler,
        )
        from centaur.study.workers import run_local_workers, store_settings, task_spec

        spec = task_spec(task_arg)
        timeout = getattr(getattr(task, "config", None), "runner", None)
        settings = {
            "task": spec,
            "method_options": options,
            "trial_timeout_s": getattr(timeout, "trial_timeout_s", None),
            "llm": llm_arg,  # never a key: workers read theirs from their own environment
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
            task, study, run_dir=trial_dir, budget_s=budget_s, n_trials=n_trials, penalty=penalty, progress=progress
        )
    finally:
        close = getattr(sampler, "close", None)
        if callable(close):
            close()
