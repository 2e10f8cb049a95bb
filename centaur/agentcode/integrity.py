"""What an edit of the training script may not touch, checked on the AST before a candidate runs,
and the checks on its output after it ran.

A statement is *guarded* when it mentions a protected thing: a metric line (a string holding the metric
or time-metric name), a binding of a protected name (the time budget, the task constants, the metric
variables, names imported from the task's own modules), the evaluation function, an import of or call
into the task's own modules, or a construct that could reach around these checks (globals(), exec,
setrlimit, sys.modules, writes to os.environ, patching a module attribute ...). The guarded statements
of a candidate must be exactly those of the original script, compared as ASTs without positions, so
formatting and moving code around are fine but changing, adding or removing such a statement is not.
Statements that only read the time budget may not be removed or changed, but new reads are allowed.
Protected functions must be identical as a whole.
"""

from __future__ import annotations

import ast
import builtins
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from centaur.agentcode.harness import metric_prints

# Calls of these builtins reach around a static check (dynamic code, namespace access).
BANNED_BUILTINS = frozenset(
    {"globals", "vars", "locals", "exec", "eval", "compile", "__import__", "setattr", "delattr", "breakpoint"}
)
# Attributes whose use changes limits, the output channel, the interpreter or the namespace.
BANNED_ATTRIBUTES = frozenset(
    {
        "setrlimit", "prlimit", "set_per_process_memory_fraction", "__dict__", "__globals__", "__builtins__",
        "__code__", "f_globals", "f_locals", "f_back", "settrace", "setprofile", "get_objects", "get_referrers",
        "dup2", "redirect_stdout", "redirect_stderr", "putenv", "unsetenv", "_exit",
        # other processes: signalling the tuner, or running code that no check saw
        "kill", "killpg", "fork", "forkpty", "execv", "execve", "execvp", "execvpe", "execl", "execlp", "execle",
        "spawnv", "spawnve", "posix_spawn", "popen",
        # the metric harness's reporter and its closure, reached through frames
        "_getframe", "tb_frame", "gi_frame", "cr_frame", "ag_frame", "__closure__", "cell_contents",
        # attribute access by computed name, and replacing the process's output streams
        "__getattribute__", "attrgetter", "displayhook", "excepthook", "__stdout__", "__stderr__",
    }
)  # fmt: skip
BANNED_MODULES = frozenset(
    {"builtins", "ctypes", "importlib", "inspect", "_thread", "cffi", "runpy", "subprocess", "pty", "centaur"}
)
_DUNDER_PART = re.compile(r"__\w|\w__")  # pieces of a dunder name, to build one at run time
_ENV_WRITERS = frozenset({"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"})
_BUILTIN_NAMES = frozenset(dir(builtins))


class IntegrityError(ValueError):
    """An edit touches a protected part of the task."""


@dataclass(frozen=True)
class Protection:
    """The protected parts of one script, derived from the original source and the task."""

    metric: str
    time_metric: str = "training_seconds"
    budget_names: frozenset[str] = frozenset({"TIME_BUDGET"})
    names: frozenset[str] = frozenset()  # may not be (re)bound outside the original statements
    functions: frozenset[str] = frozenset()  # whole definitions must stay identical
    call_names: frozenset[str] = frozenset()  # statements that use these stay identical
    modules: frozenset[str] = frozenset()  # the task's own modules: imports of them stay identical
    reports_time: bool = False  # the original prints `time_metric: <seconds>`
    time_budget: float | None = None
    witnessed: tuple[str, ...] = ()  # keys the original prints with print(): reported through the harness

    @classmethod
    def for_script(
        cls,
        source: str,
        *,
        metric: str,
        constants: Iterable[str] = (),
        functions: Iterable[str] = (),
        modules: Iterable[str] = (),
        time_metric: str = "training_seconds",
        budget_names: Iterable[str] = ("TIME_BUDGET",),
        time_budget: float | None = None,
    ) -> Protection:
        """Derive what is protected: the given constants and functions, plus what feeds the metric lines."""
        tree = ast.parse(source)
        modules = frozenset(modules)
        budget = frozenset(budget_names)
        imported = _imported_from(tree, modules)
        metric_vars: set[str] = set()
        reports_time = False
        for stmt in _statements(tree):
            strings = list(_strings(stmt))
            if any(metric in s for s in strings) or any(time_metric in s for s in strings):
                reports_time |= any(re.search(rf"\b{re.escape(time_metric)}\b", s) for s in strings)
                if isinstance(stmt, ast.Expr):  # a print of the metric: the variables it prints
                    metric_vars |= {n.id for n in _own_names(stmt) if n.id not in _BUILTIN_NAMES}
        metric_functions: set[str] = set()
        data_vars: set[str] = set()
        for stmt in _statements(tree):
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and isinstance(stmt.value, ast.Call):
                called = _call_name(stmt.value)
                bound = {n.id for n in _bound_names(stmt)}
                if called and bound & metric_vars:
                    metric_functions.add(called)
                if called and called in imported:  # e.g. `train, val = load_split(...)`: the data split
                    data_vars |= bound
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        keys = [metric, time_metric] if reports_time else [metric]
        witnessed = tuple(k for k in keys if metric_prints(tree, [k]))
        protected_functions = frozenset(functions) | (metric_functions & defined)
        return cls(
            metric=metric,
            time_metric=time_metric,
            budget_names=budget,
            names=frozenset(constants) | budget | metric_vars | data_vars | set(imported),
            functions=protected_functions,
            call_names=frozenset(metric_functions | {n for n in imported if not n.isupper()}),
            modules=modules,
            reports_time=reports_time,
            time_budget=time_budget,
            witnessed=witnessed,
        )

    def describe(self) -> str:
        """For the prompt and the docs: what the agent may not change."""
        parts = [f"the lines that print `{self.metric}`" + (f" and `{self.time_metric}`" if self.reports_time else "")]
        if self.functions:
            parts.append("the functions " + ", ".join(sorted(self.functions)))
        if self.names:
            parts.append("the values of " + ", ".join(sorted(self.names)))
        if self.modules:
            parts.append("the imports from " + ", ".join(sorted(self.modules)))
        parts.append("the memory limits and the environment")
        return "; ".join(parts)


# -- the static check -----------------------------------------------------------------------------
def check_source(original: str, candidate: str, protection: Protection) -> list[str]:
    """Reasons the candidate is rejected as tampering (empty: it may run). Raises SyntaxError if the
    candidate does not parse."""
    before, after = ast.parse(original), ast.parse(candidate)
    problems: list[str] = []
    for name in sorted(protection.functions):
        if _defs(before, name) != _defs(after, name):
            problems.append(f"changes the protected function {name}()")
    why: dict[str, tuple[str, str]] = {}  # statement key -> (reason, first source line), for the messages
    exact_b, keep_b = _guarded(before, protection, why)
    exact_a, keep_a = _guarded(after, protection, why)
    for key in (exact_b - exact_a) | (exact_a - exact_b):
        removed = key in exact_b and exact_b[key] > exact_a.get(key, 0)
        reason, text = why[key]
        problems.append(f"{'removes or changes' if removed else 'adds'} a protected statement ({reason}): {text}")
    for key in keep_b - keep_a:
        reason, text = why[key]
        problems.append(f"removes or changes a protected statement ({reason}): {text}")
    return problems


def _guarded(tree: ast.Module, p: Protection, why: dict[str, tuple[str, str]]) -> tuple[Counter, Counter]:
    """Guarded statements by AST dump: those that must match exactly, and those that must be kept."""
    modules = _module_names(tree)
    for _ in range(3):  # `clock = time`, `c2 = clock`: aliases of modules, to a fixpoint
        modules |= {a for stmt in _statements(tree) for a in _module_aliases(stmt, modules)}
    exact: Counter = Counter()
    keep: Counter = Counter()
    for stmt in _statements(tree):
        reasons = list(_exact_reasons(stmt, p, modules))
        budget_read = any(
            isinstance(n.ctx, ast.Load) and n.id in p.budget_names for n in _own_names(stmt)
        )
        if not reasons and not budget_read:
            continue
        key = _header_dump(stmt)  # a loop's body may change: `while counted < TIME_BUDGET:` guards its test only
        why.setdefault(key, (reasons[0] if reasons else "reads the time budget", _first_line(stmt)))
        (exact if reasons else keep)[key] += 1
    return exact, keep


def _exact_reasons(stmt: ast.stmt, p: Protection, modules: set[str]) -> Iterator[str]:
    for s in _strings(stmt):
        if p.metric in s or (p.reports_time and p.time_metric in s):
            yield "metric line"
        if s in p.names:
            yield f"names {s}"
    for name in _binding_names(stmt):
        if name in p.names:
            yield f"binds {name}"
        if name == "print":
            yield "rebinds print"
    if isinstance(stmt, (ast.Global, ast.Nonlocal)) and set(stmt.names) & p.names:
        yield "declares a protected name global"
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name in p.names | {"print"}:
        yield f"redefines {stmt.name}"
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module or ""]
        for name in names:
            root = name.split(".")[0]
            if root in p.modules or (stmt.level if isinstance(stmt, ast.ImportFrom) else 0):
                yield f"imports the task module {name}"
            if root in BANNED_MODULES:
                yield f"imports {root}"
        if any(a.name in p.names or (a.asname or "") in p.names for a in stmt.names):
            yield "binds a protected name by import"
    aliases = modules
    for name in _binding_names(stmt):
        if name in modules and not isinstance(stmt, ast.Import):
            yield f"rebinds the module name {name}"
    for node in _own_nodes(stmt):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                yield "uses getattr with a computed name"
            elif name.value.startswith("__"):
                yield f"uses getattr(..., {name.value!r})"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _DUNDER_PART.search(node.value):
            yield f"names {node.value!r}"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in p.call_names:
                yield f"uses {node.id}"
            if node.id in BANNED_BUILTINS or node.id in ("__builtins__", "builtins"):
                yield f"uses {node.id}"
        if isinstance(node, ast.Name) and node.id.startswith("__centaur"):
            yield f"uses {node.id}"
        elif isinstance(node, ast.Attribute):
            if node.attr in BANNED_ATTRIBUTES:
                yield f"uses .{node.attr}"
            if isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr in ("modules", "stdout",
                                                                                             "stderr"):
                if node.attr == "modules" or not isinstance(node.ctx, ast.Load):
                    yield f"uses sys.{node.attr}"
            if not isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                yield f"patches {node.value.id}.{node.attr}"
            if not isinstance(node.ctx, ast.Load) and node.attr in ("stdout", "stderr"):
                yield f"replaces .{node.attr}"
            if node.attr == "modules" and isinstance(node.value, ast.Name) and node.value.id in aliases:
                yield f"uses {node.value.id}.modules"
            if node.attr in _ENV_WRITERS and _is_environ(node.value):
                yield "writes the environment"
        elif isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            yield "writes the environment"


# -- runtime checks -------------------------------------------------------------------------------
def check_output(
    output: str, metrics: dict[str, float], wall_s: float, p: Protection, *, min_training_s: float | None = None
) -> list[str]:
    """Reasons a finished run's report is not to be trusted."""
    problems = []
    lines = re.findall(rf"^{re.escape(p.metric)}:\s", output.replace("\r", "\n"), re.MULTILINE)
    if len(lines) > 1:
        problems.append(f"the output has {len(lines)} '{p.metric}:' lines (the script prints one)")
    if p.reports_time:
        training = metrics.get(p.time_metric)
        if training is None or not math.isfinite(training):
            problems.append(f"no '{p.time_metric}:' line although the script reports it")
        else:
            if training > wall_s + 1.0:
                problems.append(
                    f"reported {p.time_metric} {training:.1f} s exceeds the {wall_s:.1f} s the runner measured"
                )
            if min_training_s is not None and training < 0.98 * min_training_s:
                problems.append(f"reported {p.time_metric} {training:.1f} s is below the time budget "
                                f"({min_training_s:.1f} s): the run was shortened")
    return problems


# -- AST helpers ----------------------------------------------------------------------------------
def _statements(tree: ast.AST) -> Iterator[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            yield node


_BODY_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


def _own_nodes(stmt: ast.stmt) -> Iterator[ast.AST]:
    """The expression nodes of a statement, not those of the statements nested in its bodies."""
    stack: list[ast.AST] = []
    for name, value in ast.iter_fields(stmt):
        if name == "handlers":  # `except TYPE as NAME:` belongs to the try statement
            for h in value:
                yield h
                if h.type is not None:
                    stack.append(h.type)
            continue
        if name == "cases":  # `case PATTERN if GUARD:` belongs to the match statement
            for c in value:
                stack.append(c.pattern)
                if c.guard is not None:
                    stack.append(c.guard)
            continue
        if name in _BODY_FIELDS:
            continue
        if isinstance(value, ast.AST):
            stack.append(value)
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, ast.AST))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.stmt):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _own_names(stmt: ast.stmt) -> Iterator[ast.Name]:
    return (n for n in _own_nodes(stmt) if isinstance(n, ast.Name))


def _bound_names(stmt: ast.stmt) -> Iterator[ast.Name]:
    return (n for n in _own_names(stmt) if isinstance(n.ctx, (ast.Store, ast.Del)))


def _binding_names(stmt: ast.stmt) -> Iterator[str]:
    """Every name the statement itself binds, by any form: targets, imports (`as` names included),
    match capture patterns, `except ... as`, definitions."""
    for n in _bound_names(stmt):
        yield n.id
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        for a in stmt.names:
            yield a.asname or a.name.split(".")[0]
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield stmt.name
    for node in _own_nodes(stmt):
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            yield node.name
        elif isinstance(node, ast.MatchMapping) and node.rest:
            yield node.rest
        elif isinstance(node, ast.ExceptHandler) and node.name:
            yield node.name


def _module_aliases(stmt: ast.stmt, modules: set[str]) -> set[str]:
    """Names the statement binds to a module: `clock = time`."""
    names: set[str] = set()
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        if isinstance(stmt.value, ast.Name) and stmt.value.id in modules:
            names |= {n.id for n in _bound_names(stmt)}
    return names


def _header_dump(stmt: ast.stmt) -> str:
    """The statement without the statements of its bodies (for compound statements)."""
    fields = {}
    for name, value in ast.iter_fields(stmt):
        if name in ("body", "orelse", "finalbody"):
            value = []
        elif name == "handlers":
            value = [ast.ExceptHandler(type=h.type, name=h.name, body=[]) for h in value]
        elif name == "cases":
            value = [ast.match_case(pattern=c.pattern, guard=c.guard, body=[]) for c in value]
        fields[name] = value
    return ast.dump(type(stmt)(**fields), include_attributes=False)


def _strings(stmt: ast.stmt) -> Iterator[str]:
    for node in _own_nodes(stmt):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _imported_from(tree: ast.Module, modules: frozenset[str]) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in modules):
            names |= {a.asname or a.name for a in node.names}
    return names


def _module_names(tree: ast.Module) -> set[str]:
    """Names bound to modules by `import x` / `import x as y` (attribute stores on them patch the module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
    return names


def _defs(tree: ast.Module, name: str) -> list[str]:
    return sorted(
        ast.dump(n, include_attributes=False)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
    )


def _first_line(stmt: ast.stmt) -> str:
    text = ast.unparse(stmt).splitlines()[0] if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) else (
        f"def {stmt.name}(...)" if isinstance(stmt, ast.FunctionDef) else f"class {stmt.name}"
    )
    return text[:120]
