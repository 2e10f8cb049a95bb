"""`[runner] command`: how a trial is started when it is not `python SCRIPT` (torchrun, accelerate,
`python -m pkg.train`), e.g. `torchrun --nproc_per_node=4 {script} {args}`.

The line is split as a shell would (shlex, no shell runs it). Placeholders:
- `{python}`: the interpreter centaur runs with;
- `{script}`: the trial's work copy of the script (or a starter beside it, see centaur.tasks.script);
- `{args}`: the trial's command-line arguments (argparse options, `key.path=value` overrides), as
  separate words; nothing for the other sources. It must be a word of its own;
- `{config}`: the trial's copy of the `[space] config` file.
`{{` and `}}` are literal braces.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

PLACEHOLDERS = ("python", "script", "args", "config")
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class CommandError(ValueError):
    """The command line cannot be used; the message says why."""


def parse_command(text: object) -> list[str]:
    """The words of the command line, checked: known placeholders only, `{args}` alone in its word."""
    if not isinstance(text, str) or not text.strip():
        raise CommandError('must be a command line, e.g. command = "torchrun --nproc_per_node=4 {script} {args}"')
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise CommandError(f"cannot split it into words: {e}") from None
    for word in words:
        for m in _FIELD.finditer(word):
            token = m.group(0)
            if token in ("{{", "}}"):
                continue
            if token in ("{", "}"):
                raise CommandError(f"unmatched {token!r} in {word!r}; write {token * 2} for a literal brace")
            name = m.group(1)
            if name not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise CommandError(f"unknown placeholder {token}; known: {known}")
            if name == "args" and word != "{args}":
                raise CommandError(f"{{args}} stands for several words and must be a word of its own, not {word!r}")
    return words


def placeholders(words: Sequence[str]) -> set[str]:
    """The placeholder names used in the words of a checked command."""
    return {m.group(1) for w in words for m in _FIELD.finditer(w) if m.group(1) is not None}


def command_argv(words: Sequence[str], values: Mapping[str, str], args: Sequence[str]) -> list[str]:
    """The argv of a trial: the words with `{python}`, `{script}`, `{config}` from `values` and `{args}`
    replaced by `args`."""
    argv: list[str] = []
    for word in words:
        if word == "{args}":
            argv += list(args)
            continue

        def fill(m: re.Match[str]) -> str:
            token = m.group(0)
            if token in ("{{", "}}"):
                return token[0]
            name = m.group(1)
            if name not in values:
                raise CommandError(f"{{{name}}} has no value for this trial")
            return values[name]

        argv.append(_FIELD.sub(fill, word))
    return argv


STARTER = "centaur_launch.py"


def starter_source(work_copy: str, spec: str | None = None) -> str:
    """The file `{script}` names: it applies `[runner] gpu_memory_fraction` in each process the command
    starts (torchrun's workers too), then runs the work copy as __main__, recording the values it used
    when `spec` (the trial's verification spec, centaur.runner.observe) is given."""
    return (
        "# Written by centaur: applies [runner] gpu_memory_fraction, then runs the trial's work copy\n"
        "# and records the values it used (centaur.runner.observe).\n"
        "from centaur.runner.launch import _apply_gpu_memory_fraction\n"
        "from centaur.runner.observe import run_observed\n\n"
        "_apply_gpu_memory_fraction()\n"
        f"run_observed({work_copy!r}, {spec!r})\n"
    )
