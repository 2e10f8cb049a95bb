"""Task strings, parsed in one place: 'gpt' (the bundled CPU task), 'surrogate[:TRIALS.json]' (the
surrogate of the reference study) or a script path. A study records the string so a worker process
finds the same task again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from centaur.paths import absolute_path
from centaur.tasks.base import Task

BUNDLED_TASK = Path(__file__).resolve().parent / "gpt" / "train.py"


@dataclass(frozen=True)
class TaskRef:
    """A parsed task string; paths are absolute."""

    kind: Literal["gpt", "surrogate", "script"]
    path: Path | None = None  # the script, or the surrogate's trials file (None: $CENTAUR_SURROGATE_TRIALS)

    @property
    def spec(self) -> str:
        """The string that parses back to this reference."""
        if self.kind == "gpt":
            return "gpt"
        if self.kind == "surrogate":
            return f"surrogate:{self.path}" if self.path else "surrogate"
        return str(self.path)

    @property
    def script(self) -> Path | None:
        return BUNDLED_TASK if self.kind == "gpt" else self.path if self.kind == "script" else None


def parse_task(text: str | Path | None) -> TaskRef:
    """`None` or 'gpt', 'surrogate[:PATH]', or a script path (taken against the current directory)."""
    text = "gpt" if text is None else str(text)
    if text == "gpt":
        return TaskRef("gpt")
    if text == "surrogate" or text.startswith("surrogate:"):
        path = text.split(":", 1)[1] if ":" in text else ""
        return TaskRef("surrogate", absolute_path(path) if path else None)
    return TaskRef("script", absolute_path(text))


def load_task(ref: TaskRef) -> Task:
    """The Task a reference names; FileNotFoundError names a missing script."""
    if ref.kind == "surrogate":
        from centaur.surrogate.task import SurrogateTask

        return SurrogateTask.from_trials(ref.path)
    from centaur.tasks.script import ScriptTask

    script = ref.script
    assert script is not None
    if not script.is_file():
        raise FileNotFoundError(
            f"task script not found: {script} (give a script path, 'gpt' or 'surrogate:TRIALS.json')"
        )
    return ScriptTask.from_script(script)


def resolve_task(task: Task | str | Path | None) -> Task:
    """A Task object as it is, or the task a string names (see `parse_task`)."""
    if task is None or isinstance(task, (str, Path)):
        return load_task(parse_task(task))
    return task


def task_spec(task: Task | str | Path | None) -> str | None:
    """How a worker process finds the task again; None for an in-process task object without a script."""
    if task is None or isinstance(task, (str, Path)):
        return parse_task(task).spec
    script = getattr(task, "script", None)
    if script is not None:
        return str(absolute_path(script))
    return getattr(task, "spec", None)
