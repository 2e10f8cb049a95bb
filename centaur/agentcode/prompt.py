"""The code agent's prompt: the current best script (or as much of it as fits), the history of its
edits with their results, the best value, the rules and the reply format."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = (
    "You are an autonomous machine-learning researcher who improves a training script one experiment "
    "at a time. You answer with a one-line description and SEARCH/REPLACE edit blocks, nothing else."
)
HISTORY_ROWS = 15
REPLY_FORMAT = """Reply in exactly this format (one or more blocks; each SEARCH text must be copied exactly, \
including indentation, from the script above and must occur there once):

DESCRIPTION: <one line saying what you changed and why>
<<<<<<< SEARCH
<exact lines of the current script>
=======
<the lines that replace them>
>>>>>>> REPLACE"""


@dataclass
class Experiment:
    """One earlier trial as the agent sees it."""

    number: int
    description: str
    decision: str  # kept, reverted, rejected, failed, baseline
    value: float | None
    detail: str = ""  # why it was rejected or how it failed

    def line(self, metric: str) -> str:
        tag = self.decision.upper()
        if self.value is not None and math.isfinite(self.value):
            result = f"{metric}={self.value:.4f}"
        else:
            result = f"{self.decision.upper()} ({self.detail})" if self.detail else self.decision.upper()
        return f"[{tag}] #{self.number} {self.description} -> {result}"


def build_prompt(
    *,
    script: str,
    script_name: str,
    task_description: str,
    metric: str,
    best_value: float | None,
    history: Sequence[Experiment],
    protected: str,
    protected_functions: Sequence[str],
    count_tokens: Callable[[str], int],
    budget_tokens: int,
) -> str:
    """The user message; the script is shortened (whole functions elided, protected ones first,
    then the largest) until the prompt fits `budget_tokens`."""
    shown = [e.line(metric) for e in list(history)[-HISTORY_ROWS:]]
    head = (
        f"Improve the training script `{script_name}` so that it reaches a lower {metric} "
        "(lower is better) within the same fixed training-time budget.\n\n"
        f"The task:\n{task_description.strip()}\n"
    )
    best = f"{best_value:.6f}" if best_value is not None else "none yet (no successful run)"
    rules = (
        f"\nCurrent best {metric}: {best}\n\n"
        "Rules:\n"
        f"- You may change anything else (model, optimizer, schedule, hyperparameters), but not: {protected}. "
        "An edit that touches these is rejected without running.\n"
        "- The run trains for a fixed time budget with a fixed memory cap; a change that runs out of "
        "memory or crashes is wasted. The script has no network access.\n"
        "- Make one focused change per experiment; prefer simple changes. Learn from the history.\n\n"
        + REPLY_FORMAT
    )

    def render(text: str, rows: list[str] | None = None) -> str:
        rows = shown if rows is None else rows
        past = "\nRecent experiments (newest last):\n" + "\n".join(rows) + "\n" if rows else "\nNo experiments yet.\n"
        return f"{head}\nThe current best version of `{script_name}`:\n```python\n{text}```\n{past}{rules}"

    text = script if script.endswith("\n") else script + "\n"
    prompt = render(text)
    for name in _elision_order(script, protected_functions):
        if count_tokens(prompt) <= budget_tokens:
            break
        text = _elide(text, name, name in protected_functions)
        prompt = render(text)
    while count_tokens(prompt) > budget_tokens:  # then long statements (docstrings, tables), largest first
        shorter = _elide_longest_statement(text)
        if shorter == text:
            break
        text, prompt = shorter, render(shorter)
    rows = list(shown)
    while count_tokens(prompt) > budget_tokens and len(rows) > 3:  # last, the oldest experiments
        rows.pop(0)
        prompt = render(text, rows)
    return prompt


def _elide_longest_statement(source: str) -> str:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    spans = [(n.lineno, n.end_lineno or n.lineno) for n in tree.body
             if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    spans = [s for s in spans if s[1] - s[0] >= 2]
    if not spans:
        return source
    start, end = max(spans, key=lambda s: s[1] - s[0])
    lines = source.splitlines(keepends=True)
    stub = f"# [{end - start + 1} lines not shown, starting: {lines[start - 1].strip()[:60]}]\n"
    return "".join(lines[: start - 1] + [stub] + lines[end:])


def _elision_order(source: str, protected: Sequence[str]) -> list[str]:
    """Top-level functions and classes to elide: protected ones first, then the largest."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    defs.sort(key=lambda n: (n.name not in protected, -((n.end_lineno or n.lineno) - n.lineno)))
    return [n.name for n in defs]


def _elide(source: str, name: str, protected: bool) -> str:
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            end = node.end_lineno or node.lineno
            lines = source.splitlines(keepends=True)
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            why = "protected, do not edit it" if protected else "left out to fit the prompt"
            stub = f"# [{kind} {name}: {end - start + 1} lines not shown; {why}]\n"
            return "".join(lines[: start - 1] + [stub] + lines[end:])
    return source
