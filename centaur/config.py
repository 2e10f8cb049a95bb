"""`centaur.toml`: the per-script settings file that sits beside a training script."""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.units import parse_duration, parse_size

CONFIG_NAME = "centaur.toml"
_SECTIONS = {"task", "runner", "space", "constants", "llm", "study", "methods", "tracking"}
_PARAM_KEYS = {"type", "low", "high", "log", "choices", "fixed", "exclude", "default", "help"}


class ConfigError(ValueError):
    """centaur.toml is malformed; the message names the file and the key to fix."""


@dataclass
class RunnerSettings:
    trial_timeout_s: float | None = None  # None: derived from the task (e.g. 2x its time budget + 10 min)
    memory_cap_bytes: int | None = None  # CPU data-segment cap applied outside the script
    gpu_memory_fraction: float | None = None  # passed to a launcher that applies it before the script runs
    scrub_env: bool = True  # trials get an allowlisted environment (keys and tokens never reach them anyway)
    env_passthrough: list[str] = field(default_factory=list)  # names or glob patterns kept when scrubbing
    command: str | None = None  # [runner] command: how a trial is started ({python} {script} {args} {config})


@dataclass
class ProjectConfig:
    path: Path | None = None
    task: dict[str, Any] = field(default_factory=dict)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    exclude: list[str] = field(default_factory=list)
    constraints: list[str] | None = None  # None: the built-in rules apply
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)  # [tracking]: centaur.tracking.TrackingSettings
    study: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    space_source: str | None = None  # [space] source (SPACE_SOURCES); None: detected
    space_config: str | None = None  # [space] config: the YAML/JSON/TOML file the script reads (as written)
    config_inject: str = "copy"  # [space] config_inject: copy (a per-trial copy of the file) | overrides
    metric: MetricSettings = field(default_factory=lambda: MetricSettings())


@dataclass(frozen=True)
class MetricSettings:
    """How a trial's metric is read ([task] metric, metric_regex, metric_file, metric_reduce, direction)."""

    name: str = "val_bpb"
    regex: str | None = None  # one group: the value
    file: str | None = None  # a JSON file the script writes (beside its __file__, or in its working directory)
    reduce: str = "last"  # last | min | max: which of several values counts
    direction: str = "minimize"

    @property
    def default(self) -> bool:
        """Only `name: number` lines and minimising: the runner's own parse is all it takes."""
        return self.regex is None and self.file is None and self.reduce == "last" and self.direction == "minimize"


def config_path_for(script: Path) -> Path:
    return script.parent / CONFIG_NAME


def load_config(path: Path | None) -> ProjectConfig:
    """Read and check a centaur.toml; a missing file gives the empty config."""
    if path is None or not path.exists():
        return ProjectConfig(path=None)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    unknown = set(data) - _SECTIONS
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    cfg = ProjectConfig(path=path)
    cfg.task = _table(data, "task", path)
    cfg.llm = _table(data, "llm", path)
    cfg.tracking = _table(data, "tracking", path)
    cfg.study = _table(data, "study", path)
    cfg.constants = _table(data, "constants", path)
    cfg.methods = _table(data, "methods", path)
    runner = _table(data, "runner", path)
    scrub_env, env_passthrough = _runner_env(runner, path)
    try:
        cfg.runner = RunnerSettings(
            trial_timeout_s=parse_duration(runner["trial_timeout"]) if "trial_timeout" in runner else None,
            memory_cap_bytes=parse_size(runner["memory_cap"]) if runner.get("memory_cap") else None,
            gpu_memory_fraction=float(runner["gpu_memory_fraction"]) if "gpu_memory_fraction" in runner else None,
            scrub_env=scrub_env,
            env_passthrough=env_passthrough,
            command=_runner_command(runner, path),
        )
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: [runner]: {e}") from None
    unknown = set(runner) - {"trial_timeout", "memory_cap", "gpu_memory_fraction", "scrub_env", "env_passthrough",
                             "command"}  # fmt: skip
    if unknown:
        raise ConfigError(f"{path}: [runner]: unknown key(s) {sorted(unknown)}")
    cfg.metric = _metric_settings(cfg.task, path)
    _check_progress(cfg.task, path)
    space = _table(data, "space", path)
    unknown = set(space) - {"exclude", "constraints", "params", "source", "config", "config_inject"}
    if unknown:
        raise ConfigError(
            f"{path}: [space] {sorted(unknown)[0]}: unknown key(s) {sorted(unknown)}; "
            "known: source, config, config_inject, exclude, constraints, params"
        )
    if "source" in space:
        if space["source"] not in SPACE_SOURCES:
            raise ConfigError(
                f"{path}: [space] source = {toml_value(space['source'])}: must be one of "
                f"{', '.join(map(toml_value, SPACE_SOURCES))}"
            )
        cfg.space_source = space["source"]
    _space_config(cfg, space, path)
    cfg.exclude = _str_list(space.get("exclude", []), path, "exclude", '["SEED"]')
    if "constraints" in space:
        cfg.constraints = _str_list(space["constraints"], path, "constraints", '["BATCH % MICRO_BATCH == 0"]')
    params = space.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(
            f"{path}: [space] params = {toml_value(params)}: [space.params] must be a table of tables, "
            'e.g. [space.params.LR] with type = "float", low = 1e-4, high = 0.1'
        )
    params = _flat_params(params, path)
    for name, spec in params.items():
        _check_param_table(name, spec, path)
    cfg.params = params
    if cfg.runner.command is not None and cfg.space_config is None and _uses_config(cfg.runner.command):
        raise ConfigError(
            f"{path}: [runner] command = {toml_value(cfg.runner.command)}: {{config}} is the trial's copy of the "
            '[space] config file, and there is none; give [space] config = "conf/train.yaml" or drop {config}'
        )
    return cfg


SPACE_SOURCES = ("constants", "globals", "argparse", "dataclass", "config")


def _space_config(cfg: ProjectConfig, space: dict[str, Any], path: Path) -> None:
    """`[space] config` (the file the script reads, relative to centaur.toml) and `config_inject`."""
    if "config" in space:
        value = space["config"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{path}: [space] config = {toml_value(value)}: must be the path of the YAML, JSON or TOML file "
                'the script reads, relative to centaur.toml, e.g. config = "conf/train.yaml"'
            )
        if cfg.space_source not in (None, "config"):
            raise ConfigError(
                f'{path}: [space] config = {toml_value(value)}: only read by source = "config", not '
                f"source = {toml_value(cfg.space_source)}; drop one of them"
            )
        cfg.space_config = value.strip()
        cfg.space_source = "config"
    elif cfg.space_source == "config":
        raise ConfigError(
            f'{path}: [space] source = "config": name the file the script reads with [space] config = "...", '
            'e.g. config = "conf/train.yaml" (relative to centaur.toml)'
        )
    if "config_inject" in space:
        mode = space["config_inject"]
        if mode not in ("copy", "overrides"):
            raise ConfigError(
                f'{path}: [space] config_inject = {toml_value(mode)}: must be "copy" (a per-trial copy of the file, '
                'the default) or "overrides" (key.path=value command-line arguments, Hydra style)'
            )
        if cfg.space_config is None:
            raise ConfigError(f'{path}: [space] config_inject: only for source = "config" with [space] config = "..."')
        cfg.config_inject = mode


def _flat_params(params: dict[str, Any], path: Path, prefix: str = "") -> dict[str, Any]:
    """`[space.params.model.n_layer]` (a TOML dotted header: nested tables) read as the name "model.n_layer",
    like `[space.params."model.n_layer"]`."""
    flat: dict[str, Any] = {}
    for name, spec in params.items():
        nested = isinstance(spec, dict) and any(isinstance(v, dict) and k not in _PARAM_KEYS for k, v in spec.items())
        if not nested:
            flat[prefix + name] = spec
            continue
        own = sorted(k for k, v in spec.items() if not isinstance(v, dict) or k in _PARAM_KEYS)
        if own:
            raise ConfigError(
                f"{path}: [space.params.{prefix}{name}]: holds both settings ({', '.join(own)}) and tables of "
                f'deeper keys; quote a dotted name as one key, e.g. [space.params."{prefix}{name}.lr"]'
            )
        flat.update(_flat_params(spec, path, f"{prefix}{name}."))
    return flat


def _uses_config(command: str) -> bool:
    from centaur.runner.command import parse_command, placeholders

    return "config" in placeholders(parse_command(command))


def _runner_command(runner: dict[str, Any], path: Path) -> str | None:
    """`[runner] command`, checked: a command line with known placeholders."""
    if "command" not in runner:
        return None
    value = runner["command"]
    from centaur.runner.command import CommandError, parse_command

    try:
        parse_command(value)
    except CommandError as e:
        raise ConfigError(f"{path}: [runner] command = {toml_value(value)}: {e}") from None
    return value


_METRIC_KEYS = ("metric", "metric_regex", "metric_file", "metric_reduce", "direction")


def _check_progress(task: dict[str, Any], path: Path) -> None:
    """`[task] progress`: the regex of the script's progress lines, and `[task] fidelity`: the name of its
    time-budget-like parameter, for pruning (docs/pruning.md)."""
    fidelity = task.get("fidelity")
    if fidelity is not None and (not isinstance(fidelity, str) or not fidelity.replace(".", "_").isidentifier()):
        raise ConfigError(
            f"{path}: [task] fidelity must name the script's time-budget-like parameter, e.g. "
            f'fidelity = "TIME_BUDGET", got {toml_value(fidelity)}'
        )
    if "progress" not in task:
        return
    from centaur.runner.progress import ProgressPattern, ProgressPatternError

    try:
        ProgressPattern.compile(task["progress"])
    except ProgressPatternError as e:
        raise ConfigError(f"{path}: {e}") from None


def _metric_settings(task: dict[str, Any], path: Path) -> MetricSettings:
    """The `[task]` metric keys, checked."""
    import re

    for key in _METRIC_KEYS:
        if key in task and not isinstance(task[key], str):
            raise ConfigError(f"{path}: [task] {key} = {toml_value(task[key])}: must be a string")
    name = task.get("metric", "val_bpb").strip()
    if not name:
        raise ConfigError(f'{path}: [task] metric = "": give the name of the metric, e.g. metric = "val_loss"')
    regex = task.get("metric_regex")
    if regex is not None:
        try:
            groups = re.compile(regex).groups
        except re.error as e:
            raise ConfigError(
                f"{path}: [task] metric_regex = {toml_value(regex)}: not a regular expression: {e}"
            ) from None
        if groups != 1:
            raise ConfigError(
                f"{path}: [task] metric_regex = {toml_value(regex)}: needs exactly one group (the value), "
                f"has {groups}; write other groups as (?:...)"
            )
    reduce = task.get("metric_reduce", "last")
    if reduce not in ("last", "min", "max"):
        raise ConfigError(f'{path}: [task] metric_reduce = {toml_value(reduce)}: must be "last", "min" or "max"')
    direction = task.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f'{path}: [task] direction = {toml_value(direction)}: must be "minimize" or "maximize"')
    return MetricSettings(name, regex, task.get("metric_file"), reduce, direction)


def _runner_env(runner: dict[str, Any], path: Path) -> tuple[bool, list[str]]:
    """`[runner] scrub_env` (default true) and `env_passthrough` (names or glob patterns of variables that
    trials get even when the environment is scrubbed)."""
    scrub = runner.get("scrub_env", True)
    if not isinstance(scrub, bool):
        raise ConfigError(f"{path}: [runner] scrub_env = {toml_value(scrub)}: scrub_env must be true or false")
    names = runner.get("env_passthrough", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(
            f"{path}: [runner] env_passthrough = {toml_value(names)}: must be a list of strings (variable names "
            'or glob patterns), e.g. env_passthrough = ["WANDB_PROJECT", "DATA_*"]'
        )
    return scrub, [n.strip() for n in names]


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: {key} = {toml_value(value)}: [{key}] must be a table "
            f"(a [{key}] header followed by key = value lines)"
        )
    return value


def _str_list(value: Any, path: Path, key: str, example: str) -> list[str]:
    """A `[space]` key that holds a list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{path}: [space] {key} = {toml_value(value)}: must be a list of strings, e.g. {key} = {example}"
        )
    return list(value)


_BOOL_KEYS = ("exclude", "log")


def _check_param_table(name: str, spec: Any, path: Path) -> None:
    """What can be checked in `[space.params.NAME]` without the script; centaur.space.build checks the rest."""
    where = f"{path}: [space.params.{name}]"
    if not isinstance(spec, dict):
        raise ConfigError(
            f'{where}: must be a table, not {toml_value(spec)}; e.g. [space.params.{name}] with type = "int", '
            "low = 1, high = 8"
        )
    bad = sorted(set(spec) - _PARAM_KEYS)
    if bad:
        raise ConfigError(f"{where} {bad[0]}: unknown key(s) {bad}; known: {sorted(_PARAM_KEYS)}")
    for key in _BOOL_KEYS:
        if key in spec and not isinstance(spec[key], bool):
            raise ConfigError(f"{where} {key} = {toml_value(spec[key])}: {key} must be true or false")
    if "help" in spec and not isinstance(spec["help"], str):
        raise ConfigError(f'{where} help = {toml_value(spec["help"])}: help must be a string, e.g. help = "layers"')
    if "type" in spec and not isinstance(spec["type"], str):
        raise ConfigError(
            f'{where} type = {toml_value(spec["type"])}: type must be a string: "int", "float", "pow2" or "categorical"'
        )
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                f"{where} choices = {toml_value(choices)}: choices must be a non-empty list of the values to try, "
                'e.g. choices = ["adam", "sgd"]'
            )
        for choice in choices:
            if not _is_scalar(choice):
                raise ConfigError(
                    f"{where} choices = {toml_value(choices)}: {toml_value(choice)} is not a single value; "
                    "each choice must be a string, number or boolean"
                )
        seen: list[Any] = []
        for choice in choices:
            if any(type(choice) is type(s) and choice == s for s in seen):
                raise ConfigError(f"{where} choices = {toml_value(choices)}: {toml_value(choice)} is listed twice")
            seen.append(choice)
    for key in ("fixed", "default"):
        if key in spec and not _is_scalar(spec[key]):
            raise ConfigError(
                f"{where} {key} = {toml_value(spec[key])}: {key} must be a single value (a string, number or boolean)"
            )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def toml_value(value: Any) -> str:
    """`value` written as it would appear in centaur.toml (for error messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)
