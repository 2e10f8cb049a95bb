"""Launcher of an edited script: its metric lines are reported through a channel the edit cannot use.

Usage (by the sandbox): python -m centaur.agentcode.harness SCRIPT, with a one-time token as the first
line of standard input and the metric names in $CENTAUR_METRIC_KEYS (JSON list).

The harness reads the token, closes standard input, and compiles the script with every
`print(...)` call whose text names a metric key (`val_bpb: ...`) turned into a call of a reporter
that prints the line and then the same line tagged with the token. The runner trusts only tagged
lines. The integrity check guarantees that those statements are the original ones and that the edit
cannot name the reporter; a line that the edit prints itself, however it builds it, carries no token.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

from centaur.runner.launch import _apply_gpu_memory_fraction

TAG = "@@centaur-metric"
REPORTER = "__centaur_report__"


def metric_prints(tree: ast.AST, keys: Sequence[str]) -> list[ast.Call]:
    """The `print(...)` calls whose string parts start a `key:` line for one of `keys`."""
    pattern = re.compile(rf"(^|\n)\s*({'|'.join(re.escape(k) for k in keys)}):")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            strings = [n.value for a in node.args for n in ast.walk(a)
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            if any(pattern.search(s) for s in strings):
                found.append(node)
    return found


def _reporter(token: str) -> Callable[..., None]:
    def report(*args: object, sep: str | None = " ", end: str | None = "\n", **kwargs: object) -> None:
        print(*args, sep=sep, end=end, **kwargs)  # type: ignore[call-overload]
        text = (" " if sep is None else sep).join(str(a) for a in args)
        for line in text.splitlines():
            print(f"{TAG} {token} {line}", flush=True)

    return report


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m centaur.agentcode.harness SCRIPT [ARGS...]")
    token = sys.stdin.readline().strip()
    sys.stdin.close()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - stays open for the script's lifetime
    keys = json.loads(os.environ.pop("CENTAUR_METRIC_KEYS", "[]"))
    script = os.path.abspath(sys.argv[1])
    with open(script, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, filename=script)
    for call in metric_prints(tree, keys):
        call.func = ast.copy_location(ast.Name(REPORTER, ast.Load()), call.func)
    code = compile(tree, script, "exec")
    _apply_gpu_memory_fraction()
    sys.argv = [script, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(script)
    namespace = {"__name__": "__main__", "__file__": script, "__builtins__": builtins, REPORTER: _reporter(token)}
    del token
    exec(code, namespace)


if __name__ == "__main__":
    main()
