"""The `dataclass` source: fields of a settings class the script uses, found with the AST.

A settings class is a class whose body declares fields with literal defaults (`lr: float = 3e-4`) and that
is a `@dataclass` (also `attrs`' `@define`/`@attr.s`, a pydantic `BaseModel`, a `NamedTuple`), used by the
script: instantiated (`args = Hyperparameters()`), or handed to a parser (`HfArgumentParser((Args,))`,
`tyro.cli(Args)`, simple_parsing's `add_arguments(Args, ...)`). A field passed explicitly where the class
is instantiated (`GPTConfig(n_layer=DEPTH)`) does not run with its default, so it is not a candidate.
A trial's values are written into the defaults in the class body of its work copy; the trial's process
checks every instance the script made (centaur.runner.observe).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from centaur.space.extract import Assignment, constant_assignment, parse_script

_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ATTRS_DECORATORS = {"define", "frozen", "mutable", "s", "attrs"}
_PARSERS = {"HfArgumentParser", "cli", "add_arguments", "parse", "ArgumentParser"}


@dataclass(frozen=True)
class SettingsField:
    cls: str  # the class name
    kind: str  # dataclass | attrs | pydantic | namedtuple
    assignment: Assignment  # the field's name, literal default and where the default is written
    explicit: bool  # passed explicitly where the class is instantiated: its default does not run


def _name_of(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _kind(cls: ast.ClassDef) -> str | None:
    for deco in cls.decorator_list:
        name = _name_of(deco)
        root = deco.func if isinstance(deco, ast.Call) else deco
        module = root.value.id if isinstance(root, ast.Attribute) and isinstance(root.value, ast.Name) else ""
        if name == "dataclass":
            return "dataclass"
        if name in _ATTRS_DECORATORS and module in ("attr", "attrs", ""):
            return "attrs"
    for base in cls.bases:
        name = _name_of(base)
        if name in ("BaseModel", "BaseSettings"):
            return "pydantic"
        if name == "NamedTuple":
            return "namedtuple"
    return None


def find_settings_fields(source: str, filename: str = "<script>") -> list[SettingsField]:
    """The literal-default fields of the module-level settings classes that the script uses (see the
    module), in source order."""
    tree = parse_script(source, filename)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef) and _kind(node)}
    if not classes:
        return []
    used: set[str] = set()
    explicit: dict[str, set[str]] = {name: set() for name in classes}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = _name_of(node.func)
        if callee in classes:
            used.add(callee)
            fields = [f.target.id for f in classes[callee].body  # type: ignore[union-attr]
                      if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)]  # fmt: skip
            explicit[callee].update(fields[: len(node.args)])
            explicit[callee].update(k.arg for k in node.keywords if k.arg)
            if any(k.arg is None for k in node.keywords):  # **kwargs: any field may be given
                explicit[callee].update(fields)
        elif callee in _PARSERS or isinstance(node.func, ast.Attribute):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for inner in ast.walk(arg):
                    if isinstance(inner, ast.Name) and inner.id in classes:
                        used.add(inner.id)
    found: list[SettingsField] = []
    for name in sorted(used, key=lambda n: classes[n].lineno):
        cls = classes[name]
        kind = _kind(cls) or "dataclass"
        for stmt in cls.body:
            a = constant_assignment(stmt, _FIELD_RE) if isinstance(stmt, ast.AnnAssign) else None
            if a is not None:
                found.append(SettingsField(name, kind, a, a.name in explicit[name]))
    return found


def field_names(fields: list[SettingsField]) -> dict[str, SettingsField]:
    """Each field by the name the space gives it: its own name, or `Class.name` where two classes share it."""
    counts: dict[str, int] = {}
    for f in fields:
        counts[f.assignment.name] = counts.get(f.assignment.name, 0) + 1
    return {(f.assignment.name if counts[f.assignment.name] == 1 else f"{f.cls}.{f.assignment.name}"): f
            for f in fields}  # fmt: skip
