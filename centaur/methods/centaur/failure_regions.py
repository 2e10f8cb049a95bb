"""A short, readable summary of where trials failed: "DEPTH > 11 and DEVICE_BATCH_SIZE > 48: 18 of 20
out of memory". A shallow decision tree (scikit-learn) on the configurations separates the failing
region; its leaves with mostly failures become rules in the parameters' own units."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from centaur.space import SearchSpace


def failure_summary(
    space: SearchSpace,
    configs: Sequence[dict[str, Any]],
    statuses: Sequence[str],
    *,
    kind: str = "oom",
    max_depth: int = 3,
    max_rules: int = 4,
    min_trials: int = 20,
) -> str:
    """Rules for where trials of failure class `kind` happened, or a line saying there were none."""
    n = len(configs)
    counts = Counter(statuses)
    n_kind = counts.get(kind, 0)
    label = {"oom": "ran out of memory"}.get(kind, f"failed ({kind})")
    if n_kind == 0:
        return f"No trial {label} so far ({n} finished)."
    head = f"{n_kind} of {n} finished trials {label}."
    if n < min_trials or n_kind == n:  # with few trials a tree finds spurious rules
        return head
    from sklearn.tree import DecisionTreeClassifier
    names = space.names
    X = np.array([[_number(space, name, c[name]) for name in names] for c in configs], dtype=float)
    y = np.array([s == kind for s in statuses])
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=max(4, n // 40), random_state=0).fit(X, y)
    t = tree.tree_
    rules: list[tuple[float, int, int, str]] = []

    def walk(node: int, bounds: dict[str, tuple[float, float]]) -> None:
        # `bounds`: per parameter on the path, the interval lo < x <= hi the splits leave (merged, so a
        # path that splits one parameter twice reads "DEVICE_BATCH_SIZE = 128", not "<= 128 and >= 128").
        if t.children_left[node] == -1:
            total = int(t.n_node_samples[node])
            bad = int(round(t.value[node][0][list(tree.classes_).index(True)] * total)) if True in tree.classes_ else 0
            if bad / total > 0.5:
                conds = " and ".join(_condition(space, name, lo, hi) for name, (lo, hi) in bounds.items())
                rules.append((bad / total, bad, total, conds or "everywhere"))
            return
        name, thr = names[t.feature[node]], float(t.threshold[node])
        lo, hi = bounds.get(name, (-math.inf, math.inf))
        walk(t.children_left[node], {**bounds, name: (lo, min(hi, thr))})
        walk(t.children_right[node], {**bounds, name: (max(lo, thr), hi)})

    walk(0, {})
    if not rules:
        return head + " No simple region explains them."
    rules.sort(key=lambda r: (-r[1], -r[0]))
    lines = [head, "Regions where they concentrate:"]
    lines += [f"- {cond}: {bad} of {total} {label}" for _, bad, total, cond in rules[:max_rules]]
    return "\n".join(lines)


def _number(space: SearchSpace, name: str, value: Any) -> float:
    p = space[name]
    if p.kind == "categorical":
        return float(p.choices.index(value)) if value in p.choices else -1.0
    return math.log2(float(value)) if p.kind == "pow2" else float(value)


def _condition(space: SearchSpace, name: str, lo: float, hi: float) -> str:
    """`lo < x <= hi` (x on the scale of `_number`) in the parameter's own terms."""
    p = space[name]
    if p.kind == "categorical":
        chosen = [str(c) for i, c in enumerate(p.choices) if lo < i <= hi]
        return f"{name} = {chosen[0]}" if len(chosen) == 1 else f"{name} in {{{', '.join(chosen)}}}"
    if p.kind in ("pow2", "int"):
        # Smallest and largest admissible values: powers of two by exponent, integers directly.
        first = math.floor(lo) + 1 if math.isfinite(lo) else None
        last = math.floor(hi) if math.isfinite(hi) else None
        show = (lambda k: 2**k) if p.kind == "pow2" else (lambda k: k)
        if first is not None and last is not None:
            return f"{name} = {show(first)}" if first == last else f"{show(first)} <= {name} <= {show(last)}"
        return f"{name} >= {show(first)}" if first is not None else f"{name} <= {show(last)}"
    parts = [f"{name} > {lo:.3g}"] if math.isfinite(lo) else []
    parts += [f"{name} <= {hi:.3g}"] if math.isfinite(hi) else []
    return " and ".join(parts)
