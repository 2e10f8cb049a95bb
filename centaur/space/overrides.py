"""What else sets a tuned name after centaur wrote it, seen before trial 0.

A script can re-read its settings after the values centaur writes into its work copy: nanoGPT's
`exec(open('configurator.py').read())` execs the config files and applies the `--key=value` arguments of
its command line over the module's globals. Found here:
- a *configurator*: code that applies `--key=value` command-line words to the module's globals (in the
  script, or in a file it execs). With one, a trial's values are also passed as `--name=value` words at
  `{args}`, last, so they win over any config file the command passes before them;
- in `[runner] command`, a `--name=value` word or a settings file (Python, YAML, JSON, TOML) that
  assigns a tuned name where the trial's own values cannot win: the study is refused before it starts.
What is not seen here is caught at run time (centaur.runner.verify).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from centaur.config import ConfigError
from centaur.space.configfile import FORMATS, parse_config_text
from centaur.space.extract import ScriptError, find_assignments, module_level_names, parse_script
from centaur.space.sources import find_globals

_APPLIES_ARGV = re.compile(r"sys\.argv")
_SETS_GLOBALS = re.compile(r"globals\(\)\s*\[|globals\(\)\.update")


def find_configurator(source: str, script: Path) -> str | None:
    """Where the script applies `--key=value` words to its globals: "the script itself", or the path (as
    written) of the file it execs that does; None when it does not."""
    if _APPLIES_ARGV.search(source) and _SETS_GLOBALS.search(source):
        return "the script itself"
    try:
        tree = parse_script(source, str(script))
    except ScriptError:
        return None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "exec"):
            continue
        for inner in ast.walk(node):
            if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "open"
                    and inner.args and isinstance(inner.args[0], ast.Constant)
                    and isinstance(inner.args[0].value, str)):  # fmt: skip
                path = script.parent / inner.args[0].value
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if _APPLIES_ARGV.search(text) and _SETS_GLOBALS.search(text):
                    return inner.args[0].value
    return None


def configurator_args(values: dict[str, Any]) -> list[str]:
    """`--name=value` words a configurator reads back as the same Python values (it literal-evaluates the
    text, and takes a string that is no literal as it is)."""
    words = []
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot pass non-finite value {value!r} for {name}")
        text = value if isinstance(value, str) else repr(value)
        words.append(f"--{name}={text}")
    return words


def check_command(command_words: list[str], tuned: set[str], *, kind: str, configurator: str | None,
                  script_dir: Path, where: str) -> str:  # fmt: skip
    """Refuse a `[runner] command` that sets a tuned name where the trial's value cannot win (ConfigError
    naming the name, the word and the fix); return a note for `centaur space` when the trial's values are
    passed last to win over what the command sets before them."""
    if not command_words:
        return ""
    try:
        at = command_words.index("{args}")
    except ValueError:
        at = len(command_words)
    before = [w for w in command_words[:at] if "{" not in w]
    after = [w for w in command_words[at + 1:] if "{" not in w]
    values_last = kind == "globals" and configurator is not None and at < len(command_words)
    conflicts = command_setters(after, tuned, script_dir)
    if not values_last or kind == "argparse":
        conflicts = {**command_setters(before, tuned, script_dir), **conflicts}
    if conflicts:
        name, word = sorted(conflicts.items())[0]
        others = f" (also: {', '.join(sorted(set(conflicts) - {name}))})" if len(conflicts) > 1 else ""
        if values_last:
            fix = f"move {word!r} before {{args}}, so the trial's --{name}=... comes last and wins"
        elif kind == "globals" and configurator is not None:
            fix = "add {args} at the end of the command, so the trial's values are passed last and win"
        else:
            fix = (f"remove {name} from {word!r} or leave it out of the command, or exclude {name} from the "
                   "search ([space] exclude)")  # fmt: skip
        raise ConfigError(
            f"{where}: {word!r} sets {name}{others}, which is tuned: the script would run that value instead "
            f"of the trial's, and the study would record values that never ran. Fix: {fix}"
        )
    setters = command_setters(before, tuned, script_dir)
    if values_last and setters:
        shown = ", ".join(sorted({w for w in setters.values()}))
        return (f"{shown} in [runner] command set {', '.join(sorted(setters))}; the trial's values are passed "
                f"as --name=value at {{args}}, after them, so {configurator} applies them last")  # fmt: skip
    if values_last:
        return f"the trial's values are also passed as --name=value at {{args}}, so {configurator} applies them last"
    return ""


_ARG = re.compile(r"^--?([A-Za-z_][\w.-]*)(?:=(.*))?$")


def command_setters(words: Sequence[str], names: set[str], cwd: Path) -> dict[str, str]:
    """What in a `[runner] command` (its words, placeholders already removed) assigns one of `names`: a
    `--name=value` argument, or a Python/YAML/JSON/TOML file the command passes that assigns it."""
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        m = _ARG.match(word)
        if m:
            key = m.group(1).replace("-", "_")
            if key in names:
                shown = word if m.group(2) is not None or i + 1 >= len(words) else f"{word} {words[i + 1]}"
                found.setdefault(key, shown)
            continue
        path = cwd / word
        if word.startswith("-") or not path.is_file():
            continue
        for name in sorted(file_assigns(path) & names):
            found.setdefault(name, word)
    return found


def file_assigns(path: Path) -> set[str]:
    """The names a settings file passed on a command line assigns: module-level names of a Python file
    (exec'd by a configurator), the keys (last part of each dotted path) of a YAML/JSON/TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return set()
    if path.suffix == ".py":
        try:
            return module_level_names(text, str(path))
        except ScriptError:
            return set()
    if path.suffix.lower() in (".yaml", ".yml", ".json", ".toml"):
        try:
            data = parse_config_text(text, FORMATS[path.suffix.lower()])
        except Exception:  # noqa: BLE001 - a file we cannot read assigns nothing we can name
            return set()
        keys: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    keys.add(str(k))
                    walk(v)

        walk(data)
        return keys
    return set()


def script_setters(source: str, names: set[str], filename: str = "<script>") -> dict[str, str]:
    """For each of `names` that the script assigns again at module level after its first assignment (an
    `if DEBUG: DEPTH = 2`), "line N of the script" of the last such assignment."""
    try:
        tree = parse_script(source, filename)
    except ScriptError:
        return {}
    lines: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name) and n.id in names:
                        lines.setdefault(n.id, []).append(node.lineno)
    return {name: f"line {max(at)} of the script" for name, at in lines.items() if len(at) > 1}


def command_values(words: Sequence[str], names: set[str], script_dir: Path) -> dict[str, tuple[Any, str]]:
    """What the words of a `[runner] command` give `names`, applied in order as a configurator applies them
    (the last wins): the literal module-level assignments of each Python settings file, and each
    `--name=value`; by name, the value and the word that gives it. For the baseline: the script's values
    as the command really runs them."""
    found: dict[str, tuple[Any, str]] = {}
    for word in words:
        m = _ARG.match(word)
        if m is not None:
            if m.group(1) in names and m.group(2) is not None:
                try:
                    value = ast.literal_eval(m.group(2))
                except (ValueError, SyntaxError):
                    value = m.group(2)
                found[m.group(1)] = (value, word)
            continue
        path = script_dir / word
        if word.endswith(".py") and path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
                assigned = [*find_globals(text, str(path)), *find_assignments(text, str(path))]
            except (OSError, UnicodeDecodeError, ScriptError):
                continue
            for a in sorted(assigned, key=lambda a: a.lineno):
                if a.name in names:
                    found[a.name] = (a.value, word)
    return found
