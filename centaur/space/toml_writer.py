"""Write a commented centaur.toml that the user can edit."""

from __future__ import annotations

from pathlib import Path

import tomlkit

from centaur.config import CONFIG_NAME, ConfigError, config_path_for, load_config, toml_value
from centaur.space.params import Param, SearchSpace


def write_config(script: Path, space: SearchSpace) -> Path:
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Search space of {script.name}, written by `centaur space --write`. Edit freely:"))
    doc.add(
        tomlkit.comment("type = int | float | pow2 | categorical; low/high/log; choices; fixed = value; exclude = true")
    )
    try:
        existing = load_config(config_path_for(script))
    except ConfigError:
        existing = None
    task = tomlkit.table()
    task.add("metric", existing.metric.name if existing else "val_bpb")
    task.add(tomlkit.comment("metric_regex = 'val loss ([\\d.]+)'   # one group: the value (else `metric: x` lines)"))
    task.add(tomlkit.comment('metric_file = "metrics.json"   # a JSON file the script writes beside __file__'))
    task.add(tomlkit.comment('metric_reduce = "last"         # or "min" / "max" of all values printed'))
    task.add(tomlkit.comment('direction = "minimize"         # or "maximize"'))
    if existing is not None:
        for key in ("metric_regex", "metric_file", "metric_reduce", "direction"):
            if key in existing.task:
                task.add(key, existing.task[key])
    doc.add("task", task)
    runner = tomlkit.table()
    runner.add(tomlkit.comment('trial_timeout = "15m"   # kill a trial after this long'))
    runner.add(tomlkit.comment('memory_cap = "8GiB"     # CPU memory cap per trial (RLIMIT_DATA)'))
    runner.add(tomlkit.comment("gpu_memory_fraction = 0.5"))
    runner.add(tomlkit.comment('command = "torchrun --nproc_per_node=4 {script} {args}"   # how a trial starts'))
    if existing is not None and existing.runner.command:
        runner.add("command", existing.runner.command)
    doc.add("runner", runner)
    sp = tomlkit.table()
    source = getattr(space, "source", "constants")
    sp.add("source", source)
    sp["source"].comment(f"constants | globals | argparse | config; {getattr(space, 'source_reason', '')}"[:110])
    config_file = getattr(space, "config_file", None)
    if config_file is not None:
        sp.add("config", config_file.shown)
        sp["config"].comment("the YAML/JSON/TOML file the script reads; keys by dotted path")
        sp.add("config_inject", config_file.inject)
        sp["config_inject"].comment("copy: a per-trial copy of the file | overrides: key.path=value arguments")
    sp.add(
        "exclude", sorted(n for n, why in getattr(space, "skipped", {}).items() if why == "excluded in centaur.toml")
    )
    sp.add("constraints", [c.expression for c in space.constraints])
    params = tomlkit.table(is_super_table=True)
    for p in space:
        t = tomlkit.table()
        if p.help:
            t.comment(p.help)
        t.add("type", p.kind)
        if p.kind == "categorical":
            t.add("choices", list(p.choices))
        else:
            t.add("low", p.low)
            t.add("high", p.high)
            if p.kind != "pow2":
                t.add("log", p.log)
        params.add(p.name, t)
    sp.add("params", params)
    doc.add("space", sp)
    untuned = getattr(space, "untuned", {})
    skipped = getattr(space, "skipped", {})
    if untuned:
        doc.add(tomlkit.nl())
        doc.add(tomlkit.comment("Found in the script but not tuned by default: uncomment a table to tune it."))
    for i, (name, guess) in enumerate(untuned.items()):
        if i:
            doc.add(tomlkit.nl())
        key = f'"{name}"' if "." in name else name  # a dotted config key is one name
        doc.add(tomlkit.comment(f"[space.params.{key}]   # {skipped.get(name, '')}"))
        for line in _param_lines(guess):
            doc.add(tomlkit.comment(line))
    constants = {
        k: v for k, v in space.constants.items() if isinstance(v, (int, float, str, bool)) and k not in untuned
    }
    if constants:
        doc.add("constants", constants)
    path = script.parent / CONFIG_NAME
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def _param_lines(p: Param | None) -> list[str]:
    """The lines of a `[space.params.NAME]` table for a guessed parameter (a hint when there is none)."""
    if p is None:
        return ['type = "categorical"', "choices = [...]   # the values to try"]
    lines = [f"type = {toml_value(p.kind)}"]
    if p.kind == "categorical":
        return [*lines, f"choices = {toml_value(list(p.choices))}"]
    lines += [f"low = {toml_value(p.low)}", f"high = {toml_value(p.high)}"]
    return lines + ([f"log = {toml_value(p.log)}"] if p.kind != "pow2" else [])
