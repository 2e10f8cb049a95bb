"""Find `ALL_CAPS = literal` assignments in a training script with the AST."""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
_ARITH = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
}


class ScriptError(ValueError):
    """The script cannot be read or parsed; the message names the file and the line."""


@dataclass(frozen=True)
class Assignment:
    name: str
    value: Any
    lineno: int
    end_lineno: int
    col_offset: int  # start of the value expression
    end_col_offset: int


def read_script(path: Path) -> str:
    if not path.exists():
        raise ScriptError(f"script not found: {path}")
    if not path.is_file():
        raise ScriptError(f"not a file: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ScriptError(f"{path} is not UTF-8 text: {e}") from None


def parse_script(source: str, filename: str = "<script>") -> ast.Module:
    try:
        return ast.parse(source, filename=filename)
    except SyntaxError as e:
        raise ScriptError(f"{filename}:{e.lineno}: syntax error: {e.msg}") from None


def constant_value(node: ast.expr) -> Any:
    """Value of a literal or a constant arithmetic expression (`2**19`, `4 * 1024`); raises ValueError."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = constant_value(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        left, right = constant_value(node.left), constant_value(node.right)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _ARITH[type(node.op)](left, right)
    raise ValueError("not a constant expression")


def find_assignments(source: str, filename: str = "<script>") -> list[Assignment]:
    """Every single-target `NAME = constant` with an ALL_CAPS name, module level or nested,
    first occurrence of each name, in source order. Tuples and None are not constants here."""
    tree = parse_script(source, filename)
    found: dict[str, Assignment] = {}
    for node in ast.walk(tree):
        a = constant_assignment(node, NAME_RE)
        if a is not None and a.name not in found:
            found[a.name] = a
    return sorted(found.values(), key=lambda a: (a.lineno, a.col_offset))


def sibling_constants(script: Path) -> dict[str, Any]:
    """Constants of the script's sibling modules that it imports (e.g. MAX_SEQ_LEN from prepare.py)."""
    constants: dict[str, Any] = {}
    try:
        tree = parse_script(script.read_text(encoding="utf-8"), str(script))
    except (ScriptError, OSError, UnicodeDecodeError):
        return constants
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            sibling = script.parent / (node.module.replace(".", "/") + ".py")
            if sibling.is_file():
                try:
                    for a in find_assignments(sibling.read_text(encoding="utf-8"), str(sibling)):
                        constants.setdefault(a.name, a.value)
                except (ScriptError, UnicodeDecodeError):
                    continue
    return constants


def constant_assignment(node: ast.AST, name_re: re.Pattern[str]) -> Assignment | None:
    """`NAME = constant` (or `NAME: T = constant`) with a name `name_re` accepts, else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    else:
        return None
    if not isinstance(target, ast.Name) or not name_re.match(target.id):
        return None
    try:
        v = constant_value(value)
    except (ValueError, ArithmeticError):
        return None
    return Assignment(
        target.id, v, value.lineno, value.end_lineno or value.lineno, value.col_offset, value.end_col_offset or 0
    )


def module_level_names(source: str, filename: str = "<script>") -> set[str]:
    """Names assigned by statements that run at module level (also inside module-level if/try/with/for)."""
    tree = parse_script(source, filename)
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            for attr in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, attr, None)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    break
                if isinstance(inner, list):
                    visit([n for n in inner if isinstance(n, ast.stmt)] + [
                        s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body
                    ])  # fmt: skip

    visit(tree.body)
    return names
