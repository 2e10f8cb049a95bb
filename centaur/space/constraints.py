"""Cross-parameter constraints written as small Python expressions, evaluated without eval()."""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class ConstraintError(ValueError):
    pass


@dataclass(frozen=True)
class Constraint:
    """A boolean expression over parameter and constant names, e.g. ``A % (B * C) == 0``; a dotted name
    (a key of the `config` source, ``model.n_embd % model.n_head == 0``) is one name."""

    expression: str

    def __post_init__(self) -> None:
        try:
            tree = ast.parse(self.expression, mode="eval")
        except SyntaxError as e:
            raise ConstraintError(f"constraint {self.expression!r} is not a valid expression: {e.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _dotted(node) is not None:
                if any(part.startswith("_") for part in _dotted(node).split(".")):  # type: ignore[union-attr]
                    raise ConstraintError(
                        f"constraint {self.expression!r}: a dotted name names a config key; no part may start with _"
                    )
                continue  # a dotted name (a config key), looked up as one name, never an attribute
            if not isinstance(
                node,
                (
                    ast.Expression,
                    ast.BinOp,
                    ast.UnaryOp,
                    ast.Compare,
                    ast.BoolOp,
                    ast.Name,
                    ast.Constant,
                    ast.Load,
                    ast.operator,
                    ast.cmpop,
                    ast.boolop,
                    ast.unaryop,
                    ast.Tuple,
                    ast.List,
                ),
            ):
                raise ConstraintError(
                    f"constraint {self.expression!r}: {type(node).__name__} is not allowed "
                    "(use names, numbers, arithmetic, comparisons, and/or/not)"
                )
        object.__setattr__(self, "_tree", tree)

    @property
    def names(self) -> set[str]:
        found: set[str] = set()

        def visit(node: ast.AST) -> None:
            name = _dotted(node)
            if name is not None:
                found.add(name)
                return
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(self._tree)
        return found

    def holds(self, scope: Mapping[str, Any]) -> bool:
        try:
            return bool(_eval(self._tree.body, scope))
        except ZeroDivisionError:
            return False

    def message(self, scope: Mapping[str, Any]) -> str:
        values = ", ".join(f"{n}={scope[n]!r}" for n in sorted(self.names) if n in scope)
        return f"violates constraint {self.expression} ({values})"


def _dotted(node: ast.AST) -> str | None:
    """`a` for a Name, `a.b.c` for an attribute chain of names; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _eval(node: ast.AST, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    name = _dotted(node)
    if name is not None:
        if name not in scope:
            raise ConstraintError(f"unknown name {name!r} in constraint")
        return scope[name]
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e, scope) for e in node.elts)
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, scope), _eval(node.right, scope))
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, scope)
        return {ast.USub: lambda: -v, ast.UAdd: lambda: +v, ast.Not: lambda: not v}[type(node.op)]()
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, scope) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, scope)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, scope)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    raise ConstraintError(f"unsupported expression element {type(node).__name__}")
