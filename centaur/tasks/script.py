"""A training script as a task: inject the configuration into a per-trial copy and run it."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.config import ProjectConfig, config_path_for, load_config
from centaur.hardware import describe_hardware
from centaur.paths import absolute_path
from centaur.runner import classify, run_script
from centaur.runner.command import STARTER, command_argv, parse_command, placeholders, starter_source
from centaur.runner.inject import argv_for, inject, retarget_paths
from centaur.runner.outcome import metric_file_values, metric_values, reduce_values
from centaur.runner.progress import ProgressPattern, ProgressReader, TrialWatch, current_watch
from centaur.runner.verify import (
    OVERRIDDEN,
    OVERRIDDEN_FIX,
    VerificationPlan,
    judge,
    plan_for_fields,
    plan_for_script,
    read_observations,
)
from centaur.space import SearchSpace, load_space
from centaur.space.configfile import override_args
from centaur.space.overrides import command_setters, configurator_args, script_setters
from centaur.study.schema import VERIFIED_ATTR, VERIFY_NOTE_ATTR
from centaur.tasks.base import TrialResult, TrialStatus

DEFAULT_TIMEOUT_S = 3600.0


@dataclass
class ScriptTask:
    """Tune a Python training script: its ALL_CAPS constants, lowercase globals or argparse options
    (centaur.space.sources), reading the metric as `[task]` says (`metric: value` lines by default)."""

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
        watch = current_watch()
        if watch is not None and watch.fidelity is not None:
            return self._evaluate_ladder(config, trial_dir, watch)
        return self.evaluate_at(config, trial_dir)

    def _evaluate_ladder(self, config: dict[str, Any], trial_dir: Path, watch: TrialWatch) -> TrialResult:
        """A time-budget fidelity: the configuration's complete short schedules first (trial_dir/NAME-VALUE),
        the pruner asked after each; the full one, in trial_dir itself, only if none was pruned. The cost
        is what all the runs cost; a short run that fails is the trial's result."""
        ladder = watch.fidelity
        assert ladder is not None
        full = self.space.constants[ladder.name]
        rungs = ladder.rungs(float(full))
        spent_cost = spent_wall = 0.0
        runs: list[dict[str, Any]] = []
        result = TrialResult(TrialStatus.CRASH, error="no run")
        for rung in rungs:
            last = rung == rungs[-1]
            value: Any = full if last else (rung if isinstance(full, int) else float(rung))  # the script's type
            where = trial_dir if last else trial_dir / f"{ladder.name}-{rung}"
            result = self.evaluate_at(config, where, {ladder.name: value})
            spent_cost += result.cost_s or 0.0
            spent_wall += result.wall_s or 0.0
            runs.append({ladder.name: value, "status": result.status.value, "value": result.value,
                         "cost_s": result.cost_s})  # fmt: skip
            if result.status is not TrialStatus.OK or result.value is None:
                break
            if last:
                watch.report([rung], result.value)  # the complete trial's value at its full step, for the pruner
                break
            if ladder.decide(rung, result.value):
                break
        extra = {**result.extra, "fidelity_runs": runs}
        return dataclasses.replace(result, cost_s=spent_cost, wall_s=spent_wall, extra=extra)

    def evaluate_at(self, config: dict[str, Any], trial_dir: Path, overrides: dict[str, Any] | None = None
                    ) -> TrialResult:  # fmt: skip
        """One run of the script with `config` in `trial_dir`; `overrides`: values of untuned parameters
        for this run (a fidelity's short schedule). The run records what it really used, and a trial whose
        values did not run is OVERRIDDEN (centaur.runner.verify)."""
        trial_dir.mkdir(parents=True, exist_ok=True)
        work_copy = trial_dir / self.script.name
        original = source = self.script.read_text(encoding="utf-8")
        config = {**config, **(overrides or {})}
        values = {**config, **self.space.fixed}
        config_file = getattr(self.space, "config_file", None)
        config_copy: Path | None = None
        args = self.trial_args(config)
        if config_file is not None:
            # The `config` source: the trial's copy of the file (its values written in, or unchanged for
            # overrides), at its place relative to the work copy; the script's literal path of it
            # ("conf/train.yaml") is pointed at the copy.
            overrides = config_file.inject == "overrides"
            config_copy = config_file.write_trial_copy(trial_dir, self.script.parent, {} if overrides else values)
            literals = config_file.literals(self.script.parent)
            source = retarget_paths(source, literals, str(config_copy), str(self.script))[0]
        if self._passes_args():
            (trial_dir / "args.txt").write_text(shlex.join(args) + "\n", encoding="utf-8")
        elif config_file is None:
            source = inject(source, values, str(self.script), getattr(self.space, "source", None))
            if args:  # a configurator that applies --key=value after config files: the values also go last
                (trial_dir / "args.txt").write_text(shlex.join(args) + "\n", encoding="utf-8")
        work_copy.write_text(source, encoding="utf-8")
        plan = self._verification_plan(original, values, config_copy)
        spec = plan.write(trial_dir) if plan.observes else None
        command = self._trial_command(work_copy, trial_dir, args, config_copy, spec)
        self._clear_metric_file(trial_dir)
        result = self.run_work_copy(work_copy, trial_dir, command=command, args=args, verify_spec=spec)
        return self._verified(self._read_metric(result, trial_dir), plan, trial_dir, original)

    def _verification_plan(self, source: str, values: dict[str, Any], config_copy: Path | None
                           ) -> VerificationPlan:  # fmt: skip
        """What this trial's process checks, by the space's source."""
        kind = getattr(self.space, "source", "constants")
        config_file = getattr(self.space, "config_file", None)
        if config_file is not None:
            plan = VerificationPlan()
            if config_file.inject == "overrides":
                plan.unverifiable = dict.fromkeys(values, "key.path=value overrides are applied by the script's "
                                                  "config library, where centaur cannot see them")  # fmt: skip
            else:
                plan.spec.update(config_copy=str(config_copy), config_original=str(config_file.path))
        elif kind == "argparse":
            plan = VerificationPlan(spec={"arguments": dict(values)})
        elif kind == "dataclass":
            plan = plan_for_fields(source, str(self.script), values)
        else:
            plan = plan_for_script(source, str(self.script), values)
        if self.config.runner.command and "script" not in placeholders(parse_command(self.config.runner.command)):
            unseen = "[runner] command does not run {script}, so the trial's process cannot be observed"
            names = [*plan.spec.get("globals", {}), *plan.spec.get("arguments", {})]
            return VerificationPlan(unverifiable={**plan.unverifiable, **dict.fromkeys(names or values, unseen)})
        return plan

    def _verified(self, result: TrialResult, plan: VerificationPlan, trial_dir: Path, source: str) -> TrialResult:
        """`result` with its verdict; an OVERRIDDEN trial is no result of its recorded values."""
        names = {*plan.spec.get("globals", {}), *plan.spec.get("arguments", {})}
        setters: dict[str, str] = {}
        if self.config.runner.command:
            words = parse_command(self.config.runner.command)
            if getattr(self.space, "configurator", None) and "{args}" in words:
                words = words[words.index("{args}") + 1 :]  # what comes before the values passed last cannot win
            setters = command_setters([w for w in words if "{" not in w], names, self.script.parent)
        setters.update(script_setters(source, names, str(self.script)))  # a line of the script runs after both
        reason = "the run was stopped before its module finished" if result.status is TrialStatus.TIMEOUT else ""
        verdict = judge(plan, read_observations(trial_dir), setters=setters, reason_unseen=reason)
        extra = {**result.extra, VERIFIED_ATTR: verdict.state}
        if verdict.note:
            extra[VERIFY_NOTE_ATTR] = verdict.note[:500]
        if verdict.state != OVERRIDDEN:
            return dataclasses.replace(result, extra=extra)
        return dataclasses.replace(
            result, status=TrialStatus.OVERRIDDEN, value=None, cost_s=result.wall_s, extra=extra,
            error=f"the values that ran are not the trial's: {verdict.note}. Fix: {OVERRIDDEN_FIX}",
        )  # fmt: skip

    def _passes_args(self) -> bool:
        """Whether a trial's values go on the command line (argparse options, config overrides)."""
        config_file = getattr(self.space, "config_file", None)
        source = getattr(self.space, "source", "constants")
        return source == "argparse" or (config_file is not None and config_file.inject == "overrides")

    def _trial_command(self, work_copy: Path, trial_dir: Path, args: list[str], config_copy: Path | None,
                       spec: Path | None) -> list[str] | None:  # fmt: skip
        """The argv of `[runner] command` for this trial (kept in command.txt); None without one."""
        text = self.config.runner.command
        if not text:
            return None
        script = work_copy
        if self.config.runner.gpu_memory_fraction is not None or spec is not None:
            # The starter applies the fraction and records the values used, in every process, then runs
            # the work copy.
            script = trial_dir / STARTER
            script.write_text(starter_source(str(work_copy), str(spec) if spec else None), encoding="utf-8")
        values = {"python": sys.executable, "script": str(script)}
        if config_copy is not None:
            values["config"] = str(config_copy)
        argv = command_argv(parse_command(text), values, args)
        (trial_dir / "command.txt").write_text(shlex.join(argv) + "\n", encoding="utf-8")
        return argv

    def defining_inputs(self) -> list[bytes]:
        """What defines a trial's run besides the script's source, for the study identity
        (centaur.study.identity): the `[space] config` file and the `[runner] command`."""
        parts = []
        config_file = getattr(self.space, "config_file", None)
        if config_file is not None:
            parts.append(b"config:" + config_file.text.encode())
        if self.config.runner.command:
            parts.append(b"command:" + self.config.runner.command.encode())
        return parts

    def trial_args(self, config: dict[str, Any]) -> list[str]:
        """The command-line arguments of a trial: the argparse options of `config`, the `key.path=value`
        overrides of the `config` source, `--name=value` for a script whose configurator applies them to
        its globals (none for the other sources)."""
        arguments = getattr(self.space, "arguments", {})
        if self._passes_args() and getattr(self.space, "source", "constants") == "config":
            return override_args({**config, **self.space.fixed})
        if getattr(self.space, "configurator", None):
            return configurator_args({**config, **self.space.fixed})  # applied last, over config files
        if getattr(self.space, "source", "constants") != "argparse":
            return []
        return argv_for(arguments, {**config, **self.space.fixed})

    # -- the metric, when [task] asks for more than `name: number` lines -----------------------------
    def _metric_file_paths(self, trial_dir: Path) -> list[Path]:
        name = self.config.metric.file
        if name is None:
            return []
        path = Path(name)
        if path.is_absolute():
            return [path]
        return [trial_dir / path, self.script.parent / path]  # beside the work copy's __file__, or in the cwd

    def _clear_metric_file(self, trial_dir: Path) -> None:
        """A file left by an earlier run must not count for this one."""
        for path in self._metric_file_paths(trial_dir):
            path.unlink(missing_ok=True)

    def _read_metric(self, result: TrialResult, trial_dir: Path) -> TrialResult:
        """`result` with its value read as `[task]` says (a regex, key=value, JSON lines, a metrics file;
        last/min/max; a maximised metric is negated, as the study minimises)."""
        spec = self.config.metric
        if spec.default:
            return result
        metric_unread = result.status is TrialStatus.CRASH or (
            result.status is TrialStatus.DIVERGED and (result.error or "").startswith(f"{self.metric} is ")
        )
        if result.extra.get("returncode") != 0 or not (result.status is TrialStatus.OK or metric_unread):
            return result
        text = ""
        if result.log_path:
            try:
                text = Path(result.log_path).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
        metrics = dict(result.metrics)
        if spec.file is not None:
            values, where = [], f"metric file {spec.file}"
            for path in self._metric_file_paths(trial_dir):
                if path.is_file():
                    values = metric_file_values(path.read_text(encoding="utf-8", errors="replace"), self.metric)
                    if path.parent != trial_dir:
                        shutil.move(str(path), str(trial_dir / path.name))  # kept with the trial, never read again
                    break
        else:
            values = metric_values(text, self.metric, spec.regex)
            where = f"metric_regex {spec.regex!r}" if spec.regex else f"'{self.metric}: <number>' or '=<number>'"
        real = reduce_values(values, spec.reduce)
        wall = result.wall_s
        if real is None:
            return dataclasses.replace(
                result, status=TrialStatus.CRASH, value=None, cost_s=wall,
                error=f"exit code 0 but no value of {self.metric} ({where}) in the output",
            )  # fmt: skip
        metrics[self.metric] = real
        if not math.isfinite(real):
            return dataclasses.replace(result, status=TrialStatus.DIVERGED, value=None, cost_s=wall, metrics=metrics,
                                       error=f"{self.metric} is {real}")  # fmt: skip
        training = metrics.get("training_seconds")
        if training is None and (found := metric_values(text, "training_seconds")):
            training = found[-1]
        cost = training if training is not None and math.isfinite(training) else wall
        value = -real if spec.direction == "maximize" else real
        extra = {**result.extra, "metric_value": real, "direction": spec.direction}
        return dataclasses.replace(result, status=TrialStatus.OK, value=value, cost_s=cost, metrics=metrics,
                                   error=None, extra=extra)  # fmt: skip

    def run_work_copy(self, work_copy: Path, trial_dir: Path, command: list[str] | None = None,
                      args: list[str] | None = None, verify_spec: Path | None = None) -> TrialResult:  # fmt: skip
        """Run an already written work copy (also used by the code-editing agent); `command`: the argv of
        `[runner] command`, run instead of the launcher; `args`: the script's arguments under the launcher;
        `verify_spec`: record the values the run used (centaur.runner.observe)."""
        runner = self.config.runner
        env = {"PYTHONPATH": str(self.script.parent), **self.extra_env}  # sibling modules (prepare.py) import
        if command and (self.script.parent / "__init__.py").is_file():
            root = self.script.parent
            while (root / "__init__.py").is_file():
                root = root.parent
            env["PYTHONPATH"] += os.pathsep + str(root)  # `python -m pkg.train` imports the script's package
        # A pruned study watches the trial (centaur.runner.progress): its progress lines are reported while
        # it runs, and the pruner may stop it. Values are compared as the objective is, lower is better.
        watch = current_watch()
        reader = None
        progress = self.config.task.get("progress")
        if watch is not None and watch.fidelity is None and isinstance(progress, str) and progress.strip():
            sign = -1.0 if getattr(getattr(self.config, "metric", None), "direction", "") == "maximize" else 1.0
            report = watch.report
            reader = ProgressReader(ProgressPattern.compile(progress), lambda steps, v: report(steps, sign * v))
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
            on_line=reader.feed_line if reader is not None else None,
            stop=watch.stop if watch is not None else None,
            command=command,
            args=args or (),
            verify_spec=verify_spec,
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
        spec = self.config.metric
        lines = [self.config.task.get("description", f"Training script {self.script.name}.").strip()]
        if spec.direction == "maximize":
            lines.append(f"Objective: maximize {self.metric}; the values reported here are -{self.metric}, "
                         "so lower is better.")  # fmt: skip
        else:
            lines.append(f"Objective: minimize {self.metric} (printed by the script as '{self.metric}: <number>').")
        lines.append(f"Hardware: {describe_hardware(runner.memory_cap_bytes, runner.gpu_memory_fraction)}.")
        budget = self.space.constants.get("TIME_BUDGET")
        if budget:
            lines.append(f"Each trial trains for a fixed time budget of {budget} s; larger models get fewer steps.")
        lines.append("Configurations that exceed the memory cap fail with out-of-memory and waste budget.")
        return "\n".join(lines)
