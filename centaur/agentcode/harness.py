"""Launcher of an edited script: its metric lines are reported through a channel the edit cannot use.

Usage (by the sandbox): python -m centaur.agentcode.harness SCRIPT, with a one-time token as the first
line of standard input, the metric names in $CENTAUR_METRIC_KEYS (JSON list) and the task's own
modules in $CENTAUR_TASK_MODULES (imported before the script, from the task directory).

The harness reads the token, closes standard input, and compiles the script with every
`print(...)` call whose text names a metric key (`val_bpb: ...`) turned into a call of a reporter
that prints the line and writes the same line tagged with the token to a duplicate of the
original standard output. The runner trusts only tagged
lines. The integrity check guarantees that those statements are the original ones and that the edit
cannot name the reporter; a line that the edit prints itself, however it builds it, carries no token.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

from centaur.runner.launch import _apply_gpu_memory_fraction

TAG = "@@centaur-metric"
EXEC_MARK = "__centaur_exec__"  # tagged when the edited code starts: its training time is measured from here
REPORTER = "__centaur_report__"
HANDOVER = "__centaur_handover__"


def handover_stub(tree: ast.Module, function: str) -> bool:
    """Replace the body of the top-level `function(model, ...)` by a hand-over of `model` (evaluator.py):
    the declared evaluation runs outside this process. False when there is no such function."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function and node.args.args:
            call = ast.Call(ast.Name(HANDOVER, ast.Load()), [ast.Name(node.args.args[0].arg, ast.Load())], [])
            node.body = [ast.copy_location(ast.Return(call), node.body[0])]
            node.decorator_list = []
            ast.fix_missing_locations(node)
            return True
    return False


def _handover(path: str, namespace: dict) -> Callable[[object], None]:
    """Saves the model it is given to `path` (torch.save of the module, written then renamed) and ends
    the process: the training time is the parent's clock up to here."""

    def handover(model: object) -> None:
        import types

        import torch

        main = types.ModuleType("__main__")  # the script's classes are found where pickle looks for them
        main.__dict__.update(namespace)
        sys.modules["__main__"] = main
        tmp = f"{path}.tmp"
        torch.save(model, tmp)
        os.replace(tmp, path)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(0)

    return handover


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


def _reporter(token: str, fd: int) -> Callable[..., None]:
    """Prints the line as the script would, and writes it tagged to `fd`, a duplicate of the original
    standard output taken before the script ran: whatever the script does to sys.stdout (a filter that
    rewrites numbers) does not reach the tagged copy."""

    def report(*args: object, sep: str | None = " ", end: str | None = "\n", **kwargs: object) -> None:
        text = (" " if sep is None else sep).join(str(a) for a in args)
        tagged = "".join(f"\n{TAG} {token} {line}\n" for line in text.splitlines())
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - the script's stdout is the script's business
            pass
        os.write(fd, tagged.encode())
        print(*args, sep=sep, end=end, **kwargs)  # type: ignore[call-overload]

    return report


def _preimport(modules: Sequence[str]) -> None:
    """Import the task's own modules (prepare.py) from the task directory before the script runs, so
    that a module the script writes later cannot take their place."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the script's own import reports it as usual
            sys.modules.pop(name, None)


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
    handover = json.loads(os.environ.pop("CENTAUR_HANDOVER", "null"))
    if handover and not handover_stub(tree, handover["function"]):
        sys.exit(f"INVALID: no function {handover['function']}(model, ...) to hand the model over")
    code = compile(tree, script, "exec")
    _apply_gpu_memory_fraction()
    sys.argv = [script, *sys.argv[2:]]
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = os.path.dirname(script)
    else:
        sys.path.insert(0, os.path.dirname(script))
    _preimport(json.loads(os.environ.pop("CENTAUR_TASK_MODULES", "[]")))
    fd = os.dup(1)
    namespace = {"__name__": "__main__", "__file__": script, "__builtins__": builtins,
                 REPORTER: _reporter(token, fd)}
    if handover:
        namespace[HANDOVER] = _handover(handover["path"], namespace)
    os.write(fd, f"\n{TAG} {token} {EXEC_MARK}\n".encode())
    del token
    exec(code, namespace)


if __name__ == "__main__":
    main()
