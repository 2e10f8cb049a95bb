"""Build a SearchSpace from a script: AST extraction + curated table + heuristics + centaur.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from centaur.config import ConfigError, ProjectConfig, config_path_for, load_config
from centaur.space.constraints import Constraint, ConstraintError
from centaur.space.curated import (
    AUTORESEARCH_DEFAULTS,
    AUTORESEARCH_SEQ_LEN,
    BATCH_CONSTRAINT,
    TASK_CONSTANTS,
    curated_param,
    heuristic_param,
)
from centaur.space.extract import ScriptError, find_assignments, read_script, sibling_constants
from centaur.space.params import KINDS, Param, SearchSpace, SpaceError


def build_space(script: Path, config: ProjectConfig | None = None) -> SearchSpace:
    """The search space of `script`, with `config` (default: the centaur.toml beside it)."""
    script = Path(script)
    source = read_script(script)
    if config is None:
        config = load_config(config_path_for(script))
    assignments = find_assignments(source, str(script))
    excluded = set(config.exclude) | TASK_CONSTANTS
    constants: dict[str, Any] = dict(sibling_constants(script))
    fixed: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    params: list[Param] = []
    found = {a.name for a in assignments}
    missing = sorted(set(config.params) - found)
    if missing:
        raise ConfigError(
            f"{config.path}: [space.params] names {missing} that {script.name} does not assign as ALL_CAPS constants"
        )
    for a in assignments:
        spec = config.params.get(a.name, {})
        if a.name in excluded or spec.get("exclude"):
            constants[a.name] = a.value
            skipped[a.name] = "task constant" if a.name in TASK_CONSTANTS else "excluded in centaur.toml"
            continue
        if "fixed" in spec:
            fixed[a.name] = spec["fixed"]
            constants[a.name] = spec["fixed"]
            skipped[a.name] = f"fixed to {spec['fixed']!r} in centaur.toml"
            continue
        param = _param_from_config(a.name, a.value, spec, config) if "type" in spec else None
        if param is None:
            param = curated_param(a.name, a.value) or heuristic_param(a.name, a.value)
            if param is not None and spec:
                param = _param_from_config(a.name, a.value, {**_as_spec(param), **spec}, config)
        if param is None:
            constants[a.name] = a.value
            skipped[a.name] = f"{type(a.value).__name__} value with no range; add [space.params.{a.name}]"
            continue
        if not param.contains(param.default):
            raise SpaceError(
                f"{a.name}: the script's value {a.value!r} lies outside its range ({param.describe()}); "
                f"widen it in [space.params.{a.name}] of {config_path_for(script)}"
            )
        params.append(param)
    constants.update(config.constants)
    names = {p.name for p in params}
    if config.constraints is not None:
        expressions = config.constraints
    elif {"TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"} <= names:
        expressions = [BATCH_CONSTRAINT]
        constants.setdefault("MAX_SEQ_LEN", AUTORESEARCH_SEQ_LEN)
    else:
        expressions = []
    try:
        constraints = tuple(Constraint(e) for e in expressions)
    except ConstraintError as e:
        raise ConfigError(f"{config.path}: {e}") from None
    space = SearchSpace(tuple(params), constants=constants, fixed=fixed, constraints=constraints)
    space.skipped = skipped  # type: ignore[attr-defined]
    if params and (problems := space.violations(space.defaults())):
        raise SpaceError(f"{script.name}: the script's own values are not a valid configuration: {'; '.join(problems)}")
    return space


def load_space(script: Path | str) -> SearchSpace:
    """Like build_space, but raises a clear error when nothing is tunable."""
    script = Path(script)
    space = build_space(script)
    if not len(space):
        raise SpaceError(
            f"{script}: no tunable ALL_CAPS constants found. Tunable names are module-level or nested "
            "assignments such as `LEARNING_RATE = 3e-4`; give ranges for others in centaur.toml"
        )
    return space


def reference_space() -> SearchSpace:
    """The reference study's 14-hyperparameter space with Karpathy's defaults (section 3.2)."""
    params = tuple(curated_param(n, v) for n, v in AUTORESEARCH_DEFAULTS.items())
    return SearchSpace(
        params,
        constants={"MAX_SEQ_LEN": AUTORESEARCH_SEQ_LEN},  # type: ignore[arg-type]
        constraints=(Constraint(BATCH_CONSTRAINT),),
    )


def _as_spec(param: Param) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": param.kind, "help": param.help}
    if param.kind == "categorical":
        spec["choices"] = list(param.choices)
    else:
        spec.update(low=param.low, high=param.high, log=param.log)
    return spec


def _param_from_config(name: str, value: Any, spec: dict[str, Any], config: ProjectConfig) -> Param:
    kind = spec["type"]
    where = f"{config.path}: [space.params.{name}]"
    if kind not in KINDS:
        raise ConfigError(f"{where}: type must be one of {', '.join(KINDS)}, not {kind!r}")
    default = spec.get("default", value)
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: a categorical needs choices = [...]")
            return Param(
                name, "categorical", default, choices=tuple(choices), source="config", help=spec.get("help", "")
            )
        for key in ("low", "high"):
            if key not in spec:
                raise ConfigError(f"{where}: missing '{key}'")
            if isinstance(spec[key], bool) or not isinstance(spec[key], (int, float)):
                raise ConfigError(f"{where}: '{key}' must be a number, not {spec[key]!r}")
        return Param(
            name,
            kind,
            default,
            low=spec["low"],
            high=spec["high"],
            log=bool(spec.get("log", False)),
            source="config",
            help=spec.get("help", ""),
        )
    except SpaceError as e:
        raise ConfigError(f"{where}: {e}") from None


__all__ = ["build_space", "load_space", "reference_space", "ScriptError", "SpaceError", "ConfigError"]
