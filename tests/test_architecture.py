"""The package's shape: no import circles between modules (lazy imports inside functions included), and
the libraries' private parts touched only where the fence says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "centaur"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the centaur modules it imports anywhere in its body."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, `level - 1` packages up
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles() -> None:
    # A package's __init__ importing its own modules is not a circle of design; leave those edges out.
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t.count(".") < m.count("."))}
             for m, ts in import_graph().items()}
    assert cycles(graph) == []


def test_cmaes_still_has_what_our_fence_reaches_for() -> None:
    """centaur/methods/cmaes/library.py reads these CatCMAwM internals; a cmaes release that renames one
    must fail here, not in a study."""
    import numpy as np
    from cmaes import CatCMAwM

    from centaur.methods.cmaes import library

    opt = CatCMAwM(x_space=np.array([[0.0, 1.0]]), z_space=np.array([[0.0, 1.0, 2.0]]), c_space=np.array([3]),
                   population_size=4, seed=0)  # fmt: skip
    sol = opt.ask()
    for name in library.OPTIMIZER_ATTRS:
        assert hasattr(opt, name), name
    for name in library.SOLUTION_ATTRS:
        assert hasattr(sol, name), name
    dist = library.distribution(opt)
    assert dist.mean.shape == (2,) and dist.cov.shape == (2, 2) and dist.categorical is not None
    with library.drawing_with(opt, np.random.RandomState(1)):
        opt.ask()


def test_private_parts_of_cmaes_are_touched_in_one_module() -> None:
    private = re.compile(r"\._(?:" + "|".join(n.lstrip("_") for n in _cmaes_private()) + r")\b")
    offenders = [p for p in PACKAGE.rglob("*.py") if p.name != "library.py" and private.search(p.read_text())]
    assert offenders == []


def _cmaes_private() -> tuple[str, ...]:
    from centaur.methods.cmaes import library

    return library.OPTIMIZER_ATTRS + library.SOLUTION_ATTRS


def test_private_parts_of_optuna_are_touched_in_one_module() -> None:
    names = "storage|study_id|trial_id|suggest|cached_frozen_trial|backend"
    private = re.compile(rf"\._(?:{names})\b|from optuna[\w.]*\._\w")
    allowed = {PACKAGE / "study" / "optuna_private.py"}
    offenders = [p for p in PACKAGE.rglob("*.py") if p not in allowed and private.search(p.read_text())]
    assert offenders == []
