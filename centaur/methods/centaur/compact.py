"""The compact prompt profile (`-o prompt=compact`): the full prompt's information in about a quarter of
its tokens, for small local models on a CPU, where reading the prompt is most of a turn.

What it keeps: the task, the space (one short line a parameter), CMA-ES's mean with one-sd ranges, its
strongest correlations and categorical probabilities, CMA-ES's proposal, the best configurations, a
short window of the latest trials and the failure rules. What it drops: the prose around them, the long
history table (the full prompt shows 20 to 29 rows), and digits that carry no information: SmolLM2's
tokenizer spends one token per digit, so a value is written with 3 significant digits (2 for CMA-ES's
centre and ranges, which are approximate anyway), small values in scientific notation (`1.2e-3`),
results with 4 (they differ in the fourth digit).

The order is the full profile's: what never changes first (task, space, instructions), then what
changes once a generation (CMA-ES's state) or rarely (failure rules, the best list), then the latest
trials and CMA-ES's proposal, so a local server reuses its prompt cache for most of the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from centaur.methods.base import MethodError
from centaur.methods.centaur.failure_regions import failure_summary
from centaur.methods.centaur.view import CmaView, short_number
from centaur.methods.llm.common import History, Observation, failure_text
from centaur.space import Param, SearchSpace

TASK_CHARS = 260  # the compact profile keeps the task description's first sentences up to this length
VALUE_DIGITS = 2  # significant digits of a configuration's floats in the compact rows
RECENT = 2  # trials in the latest-trials window of the compact profile (`-o history=K` changes it)


def param_line(p: Param) -> str:
    """`DEPTH int 4..24`: the name, the kind and the range (the defaults ran as trial 0, in the history)."""
    if p.kind == "categorical":
        return f"{p.name} {'/'.join(str(c) for c in p.choices)}"
    if p.kind == "pow2":
        return f"{p.name} pow2 {p.values[0]}..{p.values[-1]}"
    scale = " log" if p.log else ""
    return f"{p.name} {p.kind}{scale} {short_number(p.low)}..{short_number(p.high)}"


def state_lines(space: SearchSpace, view: CmaView | None) -> str:
    """One line a parameter: its range, then CMA-ES's mean and one-sd range there (or its choices'
    probabilities); then CMA-ES's generation, step size and strongest correlations."""
    spreads = {s.name: s for s in view.spreads} if view is not None else {}
    out = []
    for p in space:
        line = param_line(p)
        if p.name in spreads:
            s = spreads[p.name]
            line += f": {short_number(s.centre, 2)} ({short_number(s.low, 2)}..{short_number(s.high, 2)})"
        elif view is not None and p.name in view.categorical:
            ranked = sorted(view.categorical[p.name].items(), key=lambda kv: -kv[1])
            shown = [f"{k} {v:.2f}".replace(" 0.", " .") for k, v in ranked if v >= 0.05]
            rest = len(ranked) - len(shown)
            line += ": " + " ".join(shown) + (f", {rest} others below .05" if rest else "")
        out.append(line)
    out += [f"constraint: {c.expression}" for c in space.constraints]
    if view is not None:
        sigma = f"sigma {short_number(view.sigma, 2)} (start {short_number(view.sigma0, 2)})"
        line = f"CMA-ES generation {view.generation}, {sigma}"
        if view.correlations:
            line += "; correlations: " + ", ".join(f"{a}&{b} {r:+.1f}" for a, b, r in view.correlations)
        out.append(line)
    return "\n".join(out)


def short_task(text: str, limit: int = TASK_CHARS) -> str:
    """The task description's first sentences, up to `limit` characters (the objective and direction are
    stated again above the best list)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return cut[: end + 1] if end > limit // 3 else cut.rsplit(" ", 1)[0] + " ..."


def values_text(space: SearchSpace, config: dict[str, Any], digits: int = VALUE_DIGITS) -> str:
    return ",".join(short_number(config[n], digits) for n in space.names)  # a space before a digit is a token


def result_text(o: Observation) -> str:
    if o.ok:
        assert o.value is not None
        return f"{o.value:.4g}"
    return failure_text(o)


def row(space: SearchSpace, o: Observation) -> str:
    return f"{o.number}: {values_text(space, o.config)} -> {result_text(o)}"


def compact_prompt(sampler: Any, study: optuna.Study, history: History, own: dict[str, Any], handle: Any,
                   recent: int = RECENT) -> str:
    """The compact prompt of a Centaur sampler (`sampler` gives the space, metric, task, CMA backend)."""
    space: SearchSpace = sampler.space
    direction = "lower is better" if history.minimize else "higher is better"
    parts = [
        f"## Task\n{short_task(sampler.task_description)}\n",
        "## What to do\nPropose the next configuration: near CMA-ES's mean if its ranges are narrow, else from your "
        "knowledge of training; outside failure regions; never a repeat.\n",
    ]
    view = sampler.cma.view(study, handle) if sampler.show_state else None
    head = "## Parameters (rows list values in this order)" + (": range; CMA-ES's mean (-1sd..+1sd)" if view else "")
    parts.append(f"{head}\n{state_lines(space, view)}\n")
    finished = history.finished
    parts.append("## Failures\n" + failure_summary(space, [o.config for o in finished],
                                                    [o.status for o in finished]) + "\n")
    ok = sorted(history.successes, key=history.score)[: sampler.best_k]
    if ok:
        parts.append(f"## Best {len(ok)} ({sampler.metric}, {direction})\n" + lines(space, ok))
    best = {o.number for o in ok}
    window = [o for o in finished[-recent:] if o.number not in best] if recent > 0 else []
    if window:
        parts.append(f"## Latest trials ({len(finished)} so far)\n" + lines(space, window))
    if history.pending:
        running = "".join(f"{o.number}: {values_text(space, o.config)}\n" for o in history.pending[-5:])
        parts.append(f"## Running now (do not repeat)\n{running}")
    if sampler.show_state:
        parts.append(f"## CMA-ES's proposal\n{values_text(space, own)}\n")
    parts.append("Reply with only a JSON object: each parameter of the space and its value.")
    return "\n".join(parts)


def lines(space: SearchSpace, rows: Sequence[Observation]) -> str:
    return "".join(row(space, o) + "\n" for o in rows)


PROFILES = ("auto", "compact", "full")
COMPACT_CONTEXT = 8192  # `auto` chooses compact for a context of this many tokens or fewer


def prompt_profile(option: Any, settings: Any) -> str:
    """`compact` or `full` from the `prompt` option: `auto` (default) is compact for the bundled local
    server (no base_url) or a context of COMPACT_CONTEXT tokens or fewer, else full."""
    choice = str(option if option is not None else "auto").strip().lower()
    if choice not in PROFILES:
        raise MethodError(f"centaur: prompt must be one of {PROFILES}, not {choice!r} (-o prompt=...)")
    if choice != "auto":
        return choice
    local = getattr(settings, "base_url", None) is None
    return "compact" if local or int(getattr(settings, "context_tokens", 0)) <= COMPACT_CONTEXT else "full"
