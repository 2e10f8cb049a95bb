"""Write a configuration into a copy of a script, keeping its comments and formatting."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from typing import Any

from centaur.space.extract import find_assignments
from centaur.space.settings_classes import field_names, find_settings_fields
from centaur.space.sources import Argument, find_arguments, find_globals


class InjectionError(ValueError):
    pass


def format_value(value: Any) -> str:
    """Python literal for a value, readable in a diff (floats keep full precision)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value >= 1024 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InjectionError(f"cannot write non-finite value {value!r}")
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    raise InjectionError(f"cannot write a value of type {type(value).__name__}: {value!r}")


def inject(source: str, values: Mapping[str, Any], filename: str = "<script>", kind: str | None = None) -> str:
    """Replace the right-hand side of the first `NAME = ...` of each name with its new value: ALL_CAPS
    assignments anywhere, lowercase ones at module level (the `globals` source), the default of a
    settings-class field (the `dataclass` source: first, when `kind` says so)."""
    fields = {n: f.assignment for n, f in field_names(find_settings_fields(source, filename)).items()}
    by_name = dict(fields) if kind == "dataclass" else {}
    by_name.update({a.name: a for a in find_assignments(source, filename) if a.name not in by_name})
    if set(values) - set(by_name):
        by_name.update({a.name: a for a in find_globals(source, filename) if a.name not in by_name})
    if set(values) - set(by_name):
        by_name.update({n: a for n, a in fields.items() if n not in by_name})
    missing = sorted(set(values) - set(by_name))
    if missing:
        options = {a.dest: a for a in find_arguments(source, filename)}
        if set(missing) <= set(options):
            words = argv_for(options, values)
            raise InjectionError(
                f"{filename}: {missing} are command-line options, not assignments; run the script with "
                + " ".join(shlex.quote(w) for w in words)
            )
        raise InjectionError(f"{filename}: no assignment of {missing} to replace")
    lines = source.splitlines(keepends=True)
    # Bottom-up, so earlier offsets stay valid.
    for a in sorted((by_name[n] for n in values), key=lambda a: (a.lineno, a.col_offset), reverse=True):
        first, last = lines[a.lineno - 1], lines[a.end_lineno - 1]
        start = len(first.encode()[: a.col_offset].decode())
        end = len(last.encode()[: a.end_col_offset].decode())
        text = format_value(values[a.name])
        if isinstance(values[a.name], str) and first[start : start + 1] == '"':
            text = json.dumps(values[a.name], ensure_ascii=False)  # keep the script's quote style
        new = first[:start] + text + last[end:]
        lines[a.lineno - 1 : a.end_lineno] = [new]
    return "".join(lines)


def retarget_paths(source: str, paths: set[str], new: str, filename: str = "<script>") -> tuple[str, int]:
    """`source` with every string literal equal to one of `paths` replaced by `new` (the `config` source:
    a script's `open("conf/train.yaml")` is pointed at the trial's copy); returns it and how many were."""
    import ast

    from centaur.space.extract import parse_script

    tree = parse_script(source, filename)
    in_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    hits = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in paths and id(n) not in in_fstring
        and n.end_lineno == n.lineno
    ]  # fmt: skip
    lines = source.splitlines(keepends=True)
    for n in sorted(hits, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        line = lines[n.lineno - 1]
        start = len(line.encode()[: n.col_offset].decode())
        end = len(line.encode()[: n.end_col_offset].decode())
        text = json.dumps(new, ensure_ascii=False) if line[start : start + 1] == '"' else repr(new)
        lines[n.lineno - 1] = line[:start] + text + line[end:]
    return "".join(lines), len(hits)


def argv_for(arguments: Mapping[str, Argument], values: Mapping[str, Any]) -> list[str]:
    """The command-line words that give argparse options `values` (the `argparse` source), in the
    script's order of the options."""
    unknown = sorted(set(values) - set(arguments))
    if unknown:
        raise InjectionError(f"no add_argument option for {unknown}")
    words: list[str] = []
    for dest, argument in arguments.items():
        if dest in values:
            value = values[dest]
            if isinstance(value, float) and not math.isfinite(value):
                raise InjectionError(f"cannot pass non-finite value {value!r} for {argument.flag}")
            words += argument.argv(value)
    return words
