"""What a benchmark runs on: the surrogate (fitted once, loaded by every worker), the bundled task or a script."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from centaur.tasks.base import Task
from centaur.tasks.spec import load_task as load_spec_task
from centaur.tasks.spec import parse_task

MODEL_FILE = "surrogate-model.pkl"
_MODELS: dict[str, Any] = {}  # per worker process: a loaded surrogate model, by path


@dataclass(frozen=True)
class TaskSpec:
    """A picklable description of the task that each worker process turns into a Task."""

    text: str  # as the user gave it
    name: str  # Task.name, used in study names
    script: str | None = None  # a script task
    model: str | None = None  # a surrogate task: the fitted model file
    instrument: dict[str, Any] | None = None  # a surrogate task: its resolution record (surrogate/instrument.py)
    model_id: dict[str, Any] | None = None  # a surrogate task: which model it is (instrument.model_identity)

    @property
    def simulated(self) -> bool:
        """Answered in-process in milliseconds (no real training): run it on in-memory storage."""
        return self.model is not None


def prepare_task(text: str | None, bench_dir: Path, *, instrument: bool = False,
                 progress: Callable[[str], None] | None = None) -> TaskSpec:
    """Resolve TEXT ("surrogate[:TRIALS]", "gpt", or a script path) once in the parent process.

    The surrogate is fitted here (or loaded from the bench directory's cache, which is checked against
    the trials file's hash) so the workers only load the saved model. With `instrument`, its resolution
    record is computed too (minutes; PROGRESS hears the steps) or read from its cache beside it.
    """
    ref = parse_task(text)
    if ref.kind == "surrogate":
        from centaur.surrogate.task import TRIALS_ENV, SurrogateTask

        trials = str(ref.path) if ref.path else os.environ.get(TRIALS_ENV, "")
        if not trials:
            raise FileNotFoundError(f"no trials file for the surrogate: use --task surrogate:PATH or set ${TRIALS_ENV}")
        cache = Path(bench_dir) / MODEL_FILE
        task = SurrogateTask.from_trials(trials, cache=cache)
        from centaur.surrogate.instrument import instrument_for, model_identity, sidecar_path

        record = None
        if instrument:
            record = instrument_for(task.model, trials, cache=sidecar_path(cache), progress=progress).to_dict()
        return TaskSpec(text=ref.spec, name=task.name, model=str(cache.resolve()), instrument=record,
                        model_id=model_identity(task.model))
    script = ref.script
    task = load_spec_task(ref)  # validates the script and its search space now, not in the workers
    return TaskSpec(text=ref.spec, name=task.name, script=str(script))


def load_task(spec: TaskSpec, seed: int) -> Task:
    """The task for one study, in a worker. A surrogate study draws its observation noise from its seed."""
    if spec.model is not None:
        from centaur.surrogate.model import SurrogateModel
        from centaur.surrogate.task import SurrogateTask

        model = _MODELS.get(spec.model)
        if model is None:
            model = _MODELS[spec.model] = SurrogateModel.load(spec.model)
        return SurrogateTask(model, noise_seed=seed)
    from centaur.tasks.script import ScriptTask

    return ScriptTask.from_script(spec.script)
