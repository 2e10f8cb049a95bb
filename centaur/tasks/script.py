"""A training script as a task: inject the configuration into a per-trial copy and run it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.config import ProjectConfig, config_path_for, load_config
from centaur.hardware import describe_hardware
from centaur.paths import absolute_path
from centaur.runner import classify, inject, run_script
from centaur.space import SearchSpace, load_space
from centaur.tasks.base import TrialResult, TrialStatus

DEFAULT_TIMEOUT_S = 3600.0


@dataclass
class ScriptTask:
    """Tune the ALL_CAPS constants of a Python training script that prints `metric: value`."""

    script: Path
    space: SearchSpace
    config: ProjectConfig = field(default_factory=ProjectConfig)
    metric: str = "val_bpb"
    name: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_script(cls, script: Path | str, **kwargs: Any) -> ScriptTask:
        script = Path(script).resolve()
        config = load_config(config_path_for(script))
        space = load_space(script)
        metric = config.task.get("metric", "val_bpb")
        return cls(script=script, space=space, config=config, metric=metric, name=script.parent.name, **kwargs)

    @property
    def trial_timeout_s(self) -> float:
        if self.config.runner.trial_timeout_s:
            return self.config.runner.trial_timeout_s
        budget = self.space.constants.get("TIME_BUDGET")
        if isinstance(budget, (int, float)) and budget > 0:
            return float(2 * budget + 300)  # training + start-up + evaluation, with a wide margin
        return DEFAULT_TIMEOUT_S

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        # Absolute: the trial runs with the script's folder as its working directory.
        trial_dir = absolute_path(run_dir) / "trials" / f"{trial_number:05d}"
        problems = self.space.violations(config)
        if problems:
            return TrialResult(TrialStatus.INVALID, error="; ".join(problems))
        trial_dir.mkdir(parents=True, exist_ok=True)
        work_copy = trial_dir / self.script.name
        source = self.script.read_text(encoding="utf-8")
        work_copy.write_text(inject(source, {**config, **self.space.fixed}, str(self.script)), encoding="utf-8")
        return self.run_work_copy(work_copy, trial_dir)

    def run_work_copy(self, work_copy: Path, trial_dir: Path) -> TrialResult:
        """Run an already written work copy (also used by the code-editing agent)."""
        runner = self.config.runner
        env = {"PYTHONPATH": str(self.script.parent), **self.extra_env}  # sibling modules (prepare.py) import
        start = time.monotonic()
        proc = run_script(
            work_copy,
            cwd=self.script.parent,
            log_path=trial_dir / "trial.log",
            timeout_s=self.trial_timeout_s,
            memory_cap_bytes=runner.memory_cap_bytes,
            gpu_memory_fraction=runner.gpu_memory_fraction,
            scrub_env=runner.scrub_env,
            env_passthrough=runner.env_passthrough,
            extra_env=env,
        )
        outcome = classify(proc.returncode, proc.output, self.metric, timed_out=proc.timed_out, metrics=proc.metrics)
        wall = time.monotonic() - start
        training = outcome.metrics.get("training_seconds")
        ok = outcome.status is TrialStatus.OK
        cost = training if ok and training is not None and math.isfinite(training) else wall
        return TrialResult(
            outcome.status,
            outcome.value,
            cost_s=cost,
            wall_s=wall,
            metrics=outcome.metrics,
            error=outcome.error,
            log_path=str(proc.log_path),
            extra={"returncode": proc.returncode, "log_tail": proc.output[-2000:]},
        )

    def describe(self) -> str:
        runner = self.config.runner
        lines = [self.config.task.get("description", f"Training script {self.script.name}.").strip()]
        lines.append(f"Objective: minimize {self.metric} (printed by the script as '{self.metric}: <number>').")
        lines.append(f"Hardware: {describe_hardware(runner.memory_cap_bytes, runner.gpu_memory_fraction)}.")
        budget = self.space.constants.get("TIME_BUDGET")
        if budget:
            lines.append(f"Each trial trains for a fixed time budget of {budget} s; larger models get fewer steps.")
        lines.append("Configurations that exceed the memory cap fail with out-of-memory and waste budget.")
        return "\n".join(lines)
