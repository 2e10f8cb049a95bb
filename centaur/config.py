"""`centaur.toml`: the per-script settings file that sits beside a training script."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.units import parse_duration, parse_size

CONFIG_NAME = "centaur.toml"
_SECTIONS = {"task", "runner", "space", "constants", "llm", "study", "methods"}
_PARAM_KEYS = {"type", "low", "high", "log", "choices", "fixed", "exclude", "default", "help"}


class ConfigError(ValueError):
    """centaur.toml is malformed; the message names the file and the key to fix."""


@dataclass
class RunnerSettings:
    trial_timeout_s: float | None = None  # None: derived from the task (e.g. 2x its time budget + 10 min)
    memory_cap_bytes: int | None = None  # CPU data-segment cap applied outside the script
    gpu_memory_fraction: float | None = None  # passed to a launcher that applies it before the script runs
    scrub_env: bool = False  # run with a minimal environment (no API keys, tokens)


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
    study: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    cfg.study = _table(data, "study", path)
    cfg.constants = _table(data, "constants", path)
    cfg.methods = _table(data, "methods", path)
    runner = _table(data, "runner", path)
    try:
        cfg.runner = RunnerSettings(
            trial_timeout_s=parse_duration(runner["trial_timeout"]) if "trial_timeout" in runner else None,
            memory_cap_bytes=parse_size(runner["memory_cap"]) if runner.get("memory_cap") else None,
            gpu_memory_fraction=float(runner["gpu_memory_fraction"]) if "gpu_memory_fraction" in runner else None,
            scrub_env=bool(runner.get("scrub_env", False)),
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: [runner]: {e}") from None
    unknown = set(runner) - {"trial_timeout", "memory_cap", "gpu_memory_fraction", "scrub_env"}
    if unknown:
        raise ConfigError(f"{path}: [runner]: unknown key(s) {sorted(unknown)}")
    space = _table(data, "space", path)
    unknown = set(space) - {"exclude", "constraints", "params"}
    if unknown:
        raise ConfigError(f"{path}: [space]: unknown key(s) {sorted(unknown)}; known: exclude, constraints, params")
    cfg.exclude = _str_list(space.get("exclude", []), path, "space.exclude")
    if "constraints" in space:
        cfg.constraints = _str_list(space["constraints"], path, "space.constraints")
    params = space.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: [space.params] must be a table of tables")
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise ConfigError(f'{path}: [space.params.{name}] must be a table, e.g. type = "int", low = 1, high = 8')
        bad = set(spec) - _PARAM_KEYS
        if bad:
            raise ConfigError(
                f"{path}: [space.params.{name}]: unknown key(s) {sorted(bad)}; known: {sorted(_PARAM_KEYS)}"
            )
    cfg.params = params
    return cfg


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{key}] must be a table")
    return value


def _str_list(value: Any, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {key} must be a list of strings")
    return list(value)
