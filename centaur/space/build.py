"""Build a SearchSpace from a script: AST extraction + curated table + heuristics + centaur.toml."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.config import ConfigError, ProjectConfig, config_path_for, load_config, toml_value
from centaur.space.configfile import ConfigFile, load_config_file
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
from centaur.space.overrides import check_command, command_values, find_configurator
from centaur.space.params import KINDS, Param, SearchSpace, SpaceError
from centaur.space.settings_classes import field_names, find_settings_fields
from centaur.space.sources import (
    Argument,
    canonical,
    find_arguments,
    find_globals,
    named_param,
    tuned_by_default,
)


def build_space(script: Path, config: ProjectConfig | None = None) -> SearchSpace:
    """The search space of `script`, with `config` (default: the centaur.toml beside it)."""
    script = Path(script)
    source = read_script(script)
    if config is None:
        config = load_config(config_path_for(script))
    toml = config.path or config_path_for(script)
    found_in = discover(source, str(script), config)
    if found_in.kind == "config":
        found_in = _config_source(script, source, config, toml)
    _check_command(config, found_in, toml)
    configurator = find_configurator(source, script) if found_in.kind == "globals" else None
    ran_by_command = _baseline_of_command(config, configurator, {c.name for c in found_in.candidates}, script)
    assignments = [dataclasses.replace(c, value=ran_by_command[c.name][0]) if c.name in ran_by_command else c
                   for c in found_in.candidates]  # fmt: skip
    excluded = set(config.exclude) | TASK_CONSTANTS
    untuned: dict[str, Param | None] = {}
    constants: dict[str, Any] = dict(sibling_constants(script))
    fixed: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    params: list[Param] = []
    found = {a.name for a in assignments}
    missing = sorted(set(config.params) - found)
    if missing and found_in.config_file is not None:
        raise _config_key_error(found_in.config_file, missing[0], found, toml)
    if missing:
        raise ConfigError(
            f"{toml}: [space.params.{missing[0]}]: {script.name} has no {_WHAT[found_in.kind]} {missing[0]} = ..."
            f"{_did_you_mean(missing[0], found)}; names not in the script: {missing}"
        )
    for a in assignments:
        spec = config.params.get(a.name, {})
        where = f"{toml}: [space.params.{a.name}]"
        if a.name in excluded or spec.get("exclude"):
            constants[a.name] = a.value
            skipped[a.name] = "task constant" if a.name in TASK_CONSTANTS else "excluded in centaur.toml"
            continue
        if a.untuned and a.name not in config.params:
            constants[a.name] = a.value
            skipped[a.name] = a.untuned
            untuned[a.name] = _named(a.name, a.value, a.choices)
            continue
        curated = curated_param(a.name, a.value) if found_in.kind == "constants" else None
        if curated is None:
            curated = _named(a.name, a.value, a.choices)
        if "fixed" in spec:
            value = _fixed_value(a.name, a.value, spec, curated, where)
            fixed[a.name] = value
            constants[a.name] = value
            skipped[a.name] = f"fixed to {value!r} in centaur.toml"
            continue
        base = curated or _renamed(heuristic_param(a.name.rsplit(".", 1)[-1], a.value), a.name)
        spec = _with_type(a.name, a.value, spec, base, where)
        if "type" in spec:
            param: Param | None = _param_from_config(a.name, a.value, spec, where, given=spec)
        elif base is not None and spec:
            param = _param_from_config(a.name, a.value, {**_as_spec(base), **spec}, where, given=spec)
        else:
            param = base
        if param is None:
            constants[a.name] = a.value
            skipped[a.name] = f"{type(a.value).__name__} value with no range; add [space.params.{a.name}]"
            continue
        if not param.contains(param.default):
            if spec:
                raise SpaceError(
                    f"{where}: {_whose(a.name, ran_by_command)} {a.name} = {a.value!r} lies outside the range given "
                    f"here ({param.describe()}); widen the range, or set default = ... to a value inside it"
                )
            raise SpaceError(
                f"{a.name}: {_whose(a.name, ran_by_command)} {a.value!r} lies outside its range ({param.describe()}); "
                f"widen it in [space.params.{a.name}] of {toml}"
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
        expressions = _batch_constraint_by_meaning(names, constants)
    try:
        constraints = tuple(Constraint(e) for e in expressions)
    except ConstraintError as e:
        raise ConfigError(f"{toml}: [space] constraints: {e}") from None
    try:
        space = SearchSpace(tuple(params), constants=constants, fixed=fixed, constraints=constraints)
    except SpaceError as e:
        if config.constraints is None:
            raise
        raise SpaceError(f"{toml}: [space] constraints: {e}") from None
    space.skipped = skipped  # type: ignore[attr-defined]
    space.untuned = untuned  # type: ignore[attr-defined]  # found but not tuned: a guess at a range, for --write
    space.source = found_in.kind  # type: ignore[attr-defined]
    space.source_reason = found_in.reason  # type: ignore[attr-defined]
    space.arguments = found_in.arguments  # type: ignore[attr-defined]  # argparse: dest -> Argument
    space.config_file = found_in.config_file  # type: ignore[attr-defined]  # config: the parsed file
    space.configurator = configurator  # type: ignore[attr-defined]  # applies --key=value: values also passed last
    note = _check_overrides(config, space, script, configurator, found_in.kind, toml)
    from_command = {p.name: ran_by_command[p.name] for p in params
                    if p.name in ran_by_command and p.default == ran_by_command[p.name][0]}  # fmt: skip
    if from_command:
        shown = ", ".join(f"{n} = {v!r}" for n, (v, _) in sorted(from_command.items()))
        words = ", ".join(sorted({w for _, w in from_command.values()}))
        note += f"; the baseline is what the command runs ({words}): {shown}"
    space.override_note = note  # type: ignore[attr-defined]
    if params and (problems := space.violations(space.defaults())):
        raise SpaceError(f"{script.name}: the script's own values are not a valid configuration: {'; '.join(problems)}")
    return space


def _batch_constraint_by_meaning(names: set[str], constants: dict[str, Any]) -> list[str]:
    """autoresearch's batch constraint for its knobs under other names (`--total-batch-size`,
    `device_batch_size`, with the script's sequence length), when the script has all three."""
    by_canonical = {canonical(n): n for n in names}
    seq = next((n for n in constants if canonical(n) in ("MAX_SEQ_LEN", "SEQ_LEN", "SEQUENCE_LENGTH")
                and isinstance(constants[n], int) and n.isidentifier()), None)  # fmt: skip
    total, device = by_canonical.get("TOTAL_BATCH_SIZE"), by_canonical.get("DEVICE_BATCH_SIZE")
    if total and device and seq and total.isidentifier() and device.isidentifier():
        return [f"{total} % ({device} * {seq}) == 0"]
    return []


def load_space(script: Path | str) -> SearchSpace:
    """Like build_space, but raises a clear error when nothing is tunable."""
    script = Path(script)
    space = build_space(script)
    if not len(space):
        kind = getattr(space, "source", "constants")
        found = sorted(getattr(space, "skipped", {}))
        seen = f" (found, not tuned: {', '.join(found[:8])}{', ...' if len(found) > 8 else ''})" if found else ""
        raise SpaceError(
            f"{script}: no tunable parameters found ([space] source = {toml_value(kind)}){seen}. Centaur looks for "
            "ALL_CAPS constants such as `LEARNING_RATE = 3e-4`, lowercase module-level literals such as "
            "`learning_rate = 6e-4`, and argparse options such as `parser.add_argument('--lr', type=float, "
            'default=0.01)`; set [space] source = "constants", "globals" or "argparse" in centaur.toml (or name the '
            'YAML/JSON/TOML file the script reads with [space] config = "conf/train.yaml"), '
            "and tune a found name with [space.params.NAME]"
        )
    return space


@dataclass(frozen=True)
class Candidate:
    """A found name: its value in the script, why it is not tuned by default (None: it is), its choices."""

    name: str
    value: Any
    untuned: str | None = None
    choices: tuple[Any, ...] = ()


@dataclass
class Found:
    kind: str
    reason: str
    candidates: list[Candidate]
    arguments: dict[str, Argument] = field(default_factory=dict)
    config_file: ConfigFile | None = None


_WHAT = {
    "constants": "ALL_CAPS assignment",
    "globals": "lowercase module-level assignment",
    "argparse": "add_argument option with that destination",
    "dataclass": "settings-class field",
    "config": "key",
}


def _named(name: str, value: Any, choices: tuple[Any, ...] = ()) -> Param | None:
    """`named_param` of the name, or of the last part of a dotted config key (`optimizer.lr` -> `lr`)."""
    return _renamed(named_param(name.rsplit(".", 1)[-1], value, choices), name)


def _renamed(param: Param | None, name: str) -> Param | None:
    return param if param is None or param.name == name else dataclasses.replace(param, name=name)


def _config_source(script: Path, source: str, config: ProjectConfig, toml: Path) -> Found:
    """The `config` source: the scalar leaves of `[space] config`, by dotted path; what is tuned by default
    follows the last part of the path, as for globals and argparse."""
    assert config.space_config is not None
    base = toml.parent if config.path is not None else script.parent
    path = Path(config.space_config)
    path = path if path.is_absolute() else base / path
    where = f"{toml}: [space] config"
    cfg = load_config_file(path, config.space_config, config.config_inject, where)
    last = {_rule_name(k) for k in cfg.leaves}
    candidates = [Candidate(k, v, tuned_by_default(_rule_name(k), v, last)) for k, v in cfg.leaves.items()]
    reason = f"[space] config = {config.space_config!r} ({cfg.fmt.upper()}); "
    rel = cfg.trial_relpath(script.parent).as_posix()
    if cfg.inject == "overrides":
        reason += f"values passed as key.path=value arguments; the file is copied unchanged to TRIAL/{rel}"
    else:
        reason += f"each trial gets its own copy, TRIAL/{rel}"
    literal = sorted(lit for lit in cfg.literals(script.parent) if _names_literally(source, lit))
    if literal:
        reason += f"; the work copy's {literal[0]!r} is pointed at it"
    elif cfg.inject == "copy" and "config" not in _command_placeholders(config):
        reason += (f"; warning: {script.name} does not name {config.space_config!r} literally, so it must "
                   "open the file relative to its __file__ to read the copy")  # fmt: skip
    return Found("config", reason, candidates, config_file=cfg)


def _rule_name(key: str) -> str:
    """The name whose default-tuning rules a dotted key follows: its last part, or for `optimizer.name` and
    `scheduler.type` the part above it."""
    parts = key.split(".")
    if len(parts) > 1 and parts[-1] in ("name", "type", "kind"):
        return parts[-2]
    return parts[-1]


def _names_literally(source: str, text: str) -> bool:
    return f"'{text}'" in source or f'"{text}"' in source


def _command_placeholders(config: ProjectConfig) -> set[str]:
    from centaur.runner.command import parse_command, placeholders

    command = config.runner.command
    return placeholders(parse_command(command)) if command else set()


def _check_command(config: ProjectConfig, found: Found, toml: Path) -> None:
    """`[runner] command` must hand the trial's values to the script: `{args}` for argparse options and
    overrides, `{script}` (the work copy) for values written into the script, `{script}` or `{config}` for
    a per-trial config copy."""
    if not config.runner.command:
        return
    used = _command_placeholders(config)
    shown = f"{toml}: [runner] command = {toml_value(config.runner.command)}"
    if found.kind == "argparse" or (found.config_file is not None and found.config_file.inject == "overrides"):
        if "args" not in used:
            what = "argparse options" if found.kind == "argparse" else "key.path=value overrides"
            raise ConfigError(f"{shown}: has no {{args}}, so the trial's {what} would never reach the script; "
                              "add {args} where they go")  # fmt: skip
    elif found.kind == "config":
        if not used & {"script", "config"}:
            raise ConfigError(f"{shown}: has neither {{script}} nor {{config}}, so the trial's copy of "
                              f"{config.space_config} would never be read; add {{script}} (the work copy, which "
                              "reads the copy) or pass {config} (the copy's path) to the script")  # fmt: skip
    elif "script" not in used:
        raise ConfigError(f"{shown}: has no {{script}}: the {found.kind} source writes the trial's values into the "
                          "work copy of the script, which only runs as {script}")  # fmt: skip


def _whose(name: str, ran_by_command: dict[str, tuple[Any, str]]) -> str:
    return f"the value the command runs ({ran_by_command[name][1]})" if name in ran_by_command else "the script's value"


def _baseline_of_command(config: ProjectConfig, configurator: str | None, names: set[str], script: Path
                         ) -> dict[str, tuple[Any, str]]:  # fmt: skip
    """With a configurator, what the `[runner] command`'s settings files and `--name=value` words before
    `{args}` give the script's names: the values its own command runs, so the baseline is that run."""
    if configurator is None or not config.runner.command:
        return {}
    from centaur.runner.command import parse_command

    words = parse_command(config.runner.command)
    before = words[: words.index("{args}")] if "{args}" in words else words
    return command_values([w for w in before if "{" not in w], names, script.parent)


def _check_overrides(config: ProjectConfig, space: SearchSpace, script: Path, configurator: str | None, kind: str,
                     toml: Path) -> str:  # fmt: skip
    """Refuse a `[runner] command` that sets a tuned name where the trial's value cannot win
    (centaur.space.overrides); the note `centaur space` shows when the values are passed last."""
    if not config.runner.command:
        return ""
    from centaur.runner.command import parse_command

    where = f"{toml}: [runner] command"
    tuned = {p.name for p in space.params} | set(space.fixed)
    return check_command(parse_command(config.runner.command), tuned, kind=kind, configurator=configurator,
                         script_dir=script.parent, where=where)  # fmt: skip


def _config_key_error(cfg: ConfigFile, name: str, found: set[str], toml: Path) -> ConfigError:
    where = f"{toml}: [space.params.{name}]"
    if name in cfg.nonscalar:
        return ConfigError(
            f"{where}: {name} in {cfg.shown} is {cfg.nonscalar[name]}, not a single value; only scalar leaves "
            "(numbers, strings, booleans) can be tuned, by their dotted path"
        )
    return ConfigError(
        f"{where}: {cfg.shown} has no key {name}{_did_you_mean(name, found)}; keys are dotted paths such as "
        f"{', '.join(sorted(found)[:4]) or '(none found)'}"
    )


def discover(source: str, filename: str, config: ProjectConfig) -> Found:
    """The parameters of the script from the source that `[space] source` names, or the one detected:
    argparse options with names tuned by default, else ALL_CAPS constants, else lowercase globals."""
    arguments = find_arguments(source, filename)
    names = {a.dest for a in arguments}
    by_kind: dict[str, list[Candidate]] = {
        "argparse": [
            Candidate(a.dest, a.default, tuned_by_default(a.dest, a.default, names, a.choices), a.choices)
            for a in arguments
        ],
        "constants": [],
    }
    found_constants = find_assignments(source, filename)
    constant_names = {a.name for a in found_constants}
    by_kind["constants"] = [Candidate(a.name, a.value, tuned_by_default(a.name, a.value, constant_names))
                            for a in found_constants]  # fmt: skip
    settings = field_names(find_settings_fields(source, filename))
    setting_names = {f.assignment.name for f in settings.values()}
    by_kind["dataclass"] = [
        Candidate(name, f.assignment.value,
                  f"passed explicitly where {f.cls} is made, so its default never runs" if f.explicit
                  else tuned_by_default(f.assignment.name, f.assignment.value, setting_names))
        for name, f in settings.items()
    ]  # fmt: skip
    found_globals = find_globals(source, filename)
    global_names = {a.name for a in found_globals}
    by_kind["globals"] = [Candidate(a.name, a.value, tuned_by_default(a.name, a.value, global_names))
                          for a in found_globals]  # fmt: skip
    args = {a.dest: a for a in arguments}
    chosen = config.space_source
    if chosen == "config":
        return Found("config", "", [])  # build_space reads the file
    if chosen is not None:
        return Found(chosen, "set in centaur.toml", by_kind[chosen], args if chosen == "argparse" else {})
    wanted = set(config.params)
    if wanted:
        for kind in ("argparse", "constants", "dataclass", "globals"):
            if wanted <= {c.name for c in by_kind[kind]}:
                return Found(kind, "holds every [space.params] name of centaur.toml", by_kind[kind],
                             args if kind == "argparse" else {})  # fmt: skip
    excluded = set(config.exclude) | TASK_CONSTANTS
    tunable_args = [c.name for c in by_kind["argparse"] if c.untuned is None and c.name not in excluded]
    if tunable_args:
        return Found("argparse", f"argparse options {', '.join(tunable_args[:4])}", by_kind["argparse"], args)
    tunable_constants = [
        c.name for c in by_kind["constants"]
        if c.name not in excluded and c.untuned is None
        and (curated_param(c.name, c.value) or heuristic_param(c.name, c.value))
    ]  # fmt: skip
    if tunable_constants:
        return Found("constants", f"ALL_CAPS constants {', '.join(tunable_constants[:4])}", by_kind["constants"])
    tunable_fields = [c.name for c in by_kind["dataclass"] if c.untuned is None and c.name not in excluded]
    if tunable_fields:
        classes = sorted({f.cls for f in settings.values()})
        return Found("dataclass", f"fields of {', '.join(classes)}: {', '.join(tunable_fields[:4])}",
                     by_kind["dataclass"])  # fmt: skip
    tunable_globals = [c.name for c in by_kind["globals"] if c.untuned is None and c.name not in excluded]
    if tunable_globals:
        reason = f"module-level globals {', '.join(tunable_globals[:4])}"
        if _reads_overrides(source):
            reason += (" (the script also reads --key=value overrides: a trial's values are written into the work "
                       "copy, and passed last when the script applies them to its globals)")
        return Found("globals", reason, by_kind["globals"])
    return Found("constants", "nothing else found", by_kind["constants"])


def _reads_overrides(source: str) -> bool:
    """Whether the script applies `--key=value` overrides itself (an exec'd configurator, sys.argv)."""
    return bool(re.search(r"exec\(\s*open\(|sys\.argv", source))


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


_RANGE_KEYS = ("low", "high", "log", "default")
_KIND_WORDS = {"int": "an int", "pow2": "a power of two", "float": "a float", "bool": "a bool", "str": "a string"}


def _with_type(name: str, value: Any, spec: dict[str, Any], base: Param | None, where: str) -> dict[str, Any]:
    """`spec` with the type it implies: `choices` make a categorical (as in Optuna's suggest_categorical);
    a range for a number the built-in table has no entry for takes the type of the script's value."""
    if "type" in spec or not spec:
        return spec
    if "choices" in spec:
        return {**spec, "type": "categorical"}
    if base is None and any(k in spec for k in _RANGE_KEYS):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            key = next(k for k in _RANGE_KEYS if k in spec)
            raise ConfigError(
                f"{where} {key} = {toml_value(spec[key])}: {name} = {toml_value(value)} in the script is not a number; "
                f'give type = "categorical" with choices = [...] instead of {key}'
            )
        return {**spec, "type": "int" if isinstance(value, int) else "float"}
    return spec


def _param_from_config(name: str, value: Any, spec: dict[str, Any], where: str, given: dict[str, Any]) -> Param:
    """The Param that `spec` describes; `given` holds the keys the user wrote (the rest are built-in)."""
    kind = spec["type"]
    if kind not in KINDS:
        raise ConfigError(
            f"{where} type = {toml_value(kind)}: type must be one of {', '.join(map(toml_value, KINDS))}"
            f"{_did_you_mean(str(kind), KINDS, quote=True)}"
        )
    help_text = spec.get("help", "")
    if kind == "categorical":
        return _categorical_from_config(name, value, spec, where, given, help_text)
    if "choices" in spec:
        raise ConfigError(
            f'{where} choices = {toml_value(spec["choices"])}: choices need type = "categorical" '
            f'(type = "{kind}" searches the range from low to high); write type = "categorical" to try exactly these'
        )

    def shown(key: str) -> str:
        return f"{key} = {toml_value(spec[key])}" + ("" if key in given else " (built-in)")

    bounds: dict[str, Any] = {}
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(
                f"{where} type = \"{kind}\": missing '{key}'; give both low and high, "
                f"e.g. low = {_example_bounds(kind, value)[0]}, high = {_example_bounds(kind, value)[1]}"
            )
        bound = spec[key]
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            example = _example_bound(kind, key)
            raise ConfigError(f"{where} {shown(key)}: '{key}' must be a number, e.g. {key} = {example}")
        if not math.isfinite(bound):
            raise ConfigError(f"{where} {shown(key)}: '{key}' must be a finite number")
        if kind in ("int", "pow2"):
            if not float(bound).is_integer():
                near = math.ceil(bound) if key == "low" else math.floor(bound)
                raise ConfigError(
                    f"{where} {shown(key)}: {name} is {_KIND_WORDS[kind]}, so {key} must be an integer such as "
                    f'{key} = {near}; give type = "float" for a real-valued range'
                )
            bound = int(bound)
        if kind == "pow2" and not _is_pow2(bound):
            below, above = _pow2_around(bound)
            raise ConfigError(
                f"{where} {shown(key)}: {name} is a pow2 parameter, so its bounds must be powers of two, "
                f'e.g. {key} = {below} or {key} = {above}; give type = "int" to allow any integer'
            )
        bounds[key] = bound
    low, high = bounds["low"], bounds["high"]
    if low > high:
        raise ConfigError(
            f"{where} {shown('low')}, {shown('high')}: low must not exceed high; give low < high, e.g. swap them"
        )
    if low == high:
        raise ConfigError(
            f"{where} {shown('low')}, {shown('high')}: the range holds one value; "
            f"to pin {name} write fixed = {toml_value(low)} instead, or widen the range"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where} log = {toml_value(log)}: log must be true or false")
    if log and low <= 0:
        example = 1 if kind in ("int", "pow2") else _fmt_number(high / 1000 if high > 0 else 1e-5)
        raise ConfigError(
            f"{where} log = true, {shown('low')}: a log scale needs low > 0; give e.g. low = {example}, or log = false"
        )
    default = value
    if "default" in given:
        default = _checked_value(name, "default", given["default"], kind, where, _example_value(kind, value, low))
        if not low <= default <= high:
            raise ConfigError(
                f"{where} default = {toml_value(default)}: outside low = {toml_value(low)}, high = {toml_value(high)}; "
                f"give a default in [{toml_value(low)}, {toml_value(high)}]"
            )
    try:
        return Param(name, kind, default, low=low, high=high, log=log, source="config", help=help_text)
    except SpaceError as e:
        raise ConfigError(f"{where}: {e}") from None


def _categorical_from_config(
    name: str, value: Any, spec: dict[str, Any], where: str, given: dict[str, Any], help_text: str
) -> Param:
    for key in ("low", "high", "log"):
        if key in given:
            raise ConfigError(
                f"{where} {key} = {toml_value(given[key])}: a categorical parameter has no {key}; list its values "
                'in choices = [...], or give type = "int" or "float" for a range'
            )
    choices = spec.get("choices")
    if choices is None:
        raise ConfigError(
            f'{where} type = "categorical": a categorical needs choices = [...], '
            f"e.g. choices = [{toml_value(value)}, ...]"
        )
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ConfigError(
            f"{where} choices = {toml_value(choices)}: choices must be a non-empty list of the values to try, "
            f"e.g. choices = [{toml_value(value)}, ...]"
        )
    default = value
    if "default" in given:
        default = given["default"]
        if default not in choices:
            raise ConfigError(
                f"{where} default = {toml_value(default)}: not one of choices = {toml_value(list(choices))}; "
                "give one of them"
            )
    try:
        return Param(name, "categorical", default, choices=tuple(choices), source="config", help=help_text)
    except SpaceError as e:
        raise ConfigError(f"{where}: {e}") from None


def _fixed_value(name: str, value: Any, spec: dict[str, Any], curated: Param | None, where: str) -> Any:
    """The checked `fixed` value of `spec`: of the declared type, else of the built-in or the script's type."""
    kind = spec.get("type")
    if kind is not None and kind not in KINDS:
        raise ConfigError(
            f"{where} type = {toml_value(kind)}: type must be one of {', '.join(map(toml_value, KINDS))}"
            f"{_did_you_mean(str(kind), KINDS, quote=True)}"
        )
    if kind is None:
        if curated is not None and curated.kind != "categorical":
            kind = curated.kind
        elif isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, (int, float)):
            kind = "int" if isinstance(value, int) else "float"
        elif isinstance(value, str):
            kind = "str"
    choices = spec.get("choices")
    result = _checked_value(name, "fixed", spec["fixed"], kind, where, _example_value(kind, value, spec.get("low")),
                            choices=choices if isinstance(choices, list) else None)  # fmt: skip
    low, high = spec.get("low"), spec.get("high")
    if kind in ("int", "pow2", "float") and not isinstance(result, bool):
        for key, bound in (("low", low), ("high", high)):
            if isinstance(bound, (int, float)) and not isinstance(bound, bool):
                if (key == "low" and result < bound) or (key == "high" and result > bound):
                    raise ConfigError(
                        f"{where} fixed = {toml_value(result)}: outside {key} = {toml_value(bound)} given in the same "
                        "table; drop low/high (a fixed value is not searched) or fix a value inside the range"
                    )
    return result


def _checked_value(
    name: str, key: str, v: Any, kind: str | None, where: str, example: Any, choices: list[Any] | None = None
) -> Any:
    """`v` (a fixed or default value) if it suits a parameter of `kind`; integers of int kinds as int."""
    shown = f"{where} {key} = {toml_value(v)}"
    if isinstance(v, (list, tuple, dict)):
        raise ConfigError(f"{shown}: {key} must be a single value, e.g. {key} = {toml_value(example)}")
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind in ("int", "pow2"):
        if not number or not math.isfinite(v) or not float(v).is_integer():
            hint = ' (write type = "float" to allow fractions)' if number and math.isfinite(v) else ""
            raise ConfigError(f"{shown}: {name} is {_KIND_WORDS[kind]}; give an integer such as {example}{hint}")
        v = int(v)
        if kind == "pow2" and not _is_pow2(v):
            below, above = _pow2_around(v)
            raise ConfigError(f"{shown}: {name} is a power of two; give one such as {below} or {above}")
    elif kind == "float":
        if not number:
            raise ConfigError(f"{shown}: {name} is a float; give a number such as {toml_value(example)}")
        if not math.isfinite(v):
            raise ConfigError(f"{shown}: {name} must be a finite number such as {toml_value(example)}")
    elif kind == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{shown}: {name} is a bool in the script; give true or false")
    elif kind == "str":
        if not isinstance(v, str):
            raise ConfigError(f"{shown}: {name} is a string in the script; give text such as {toml_value(example)}")
    elif kind == "categorical" and choices is not None and v not in choices:
        raise ConfigError(f"{shown}: not one of choices = {toml_value(choices)}; give one of them")
    return v


def _example_value(kind: str | None, value: Any, low: Any) -> Any:
    """A value of `kind` to show in a message: the script's own where it fits."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind in ("int", "pow2"):
        if number and float(value).is_integer() and (kind == "int" or _is_pow2(int(value))):
            return int(value)
        if isinstance(low, int) and not isinstance(low, bool) and (kind == "int" or _is_pow2(low)):
            return low
        return 8
    if kind == "float":
        return float(value) if number else 0.1
    if kind == "str":
        return value if isinstance(value, str) else "adam"
    return value


def _example_bounds(kind: str, value: Any) -> tuple[str, str]:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if kind == "pow2":
        if number and _is_pow2(int(value)) and float(value).is_integer():
            return str(max(1, int(value) // 4)), str(int(value) * 4)
        return "16", "256"
    if kind == "int":
        if number and float(value).is_integer():
            return str(max(1, int(value) // 4)), str(int(value) * 4)
        return "1", "8"
    if number:
        return _fmt_number(value / 10), _fmt_number(value * 10)
    return "0.0", "1.0"


def _example_bound(kind: str, key: str) -> str:
    if kind == "pow2":
        return "16" if key == "low" else "256"
    if kind == "int":
        return "1" if key == "low" else "8"
    return "0.0" if key == "low" else "1.0"


def _fmt_number(x: float) -> str:
    return f"{x:.3g}"


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _pow2_around(n: float) -> tuple[int, int]:
    """The powers of two just below and just above `n` (1 and 2 for n < 1)."""
    if n < 1:
        return 1, 2
    below = 2 ** int(math.floor(math.log2(n)))
    return below, below * 2


def _did_you_mean(word: str, options: Any, quote: bool = False) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    if not close and word.lower().startswith("int"):
        close = ["int"] if "int" in options else []
    if not close:
        return ""
    return f" (did you mean {toml_value(close[0]) if quote else close[0]}?)"


__all__ = ["build_space", "load_space", "reference_space", "ScriptError", "SpaceError", "ConfigError"]
