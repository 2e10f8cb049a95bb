"""Write a commented centaur.toml that the user can edit."""

from __future__ import annotations

from pathlib import Path

import tomlkit

from centaur.config import CONFIG_NAME
from centaur.space.params import SearchSpace


def write_config(script: Path, space: SearchSpace) -> Path:
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Search space of {script.name}, written by `centaur space --write`. Edit freely:"))
    doc.add(
        tomlkit.comment("type = int | float | pow2 | categorical; low/high/log; choices; fixed = value; exclude = true")
    )
    task = tomlkit.table()
    task.add("metric", "val_bpb")
    doc.add("task", task)
    runner = tomlkit.table()
    runner.add(tomlkit.comment('trial_timeout = "15m"   # kill a trial after this long'))
    runner.add(tomlkit.comment('memory_cap = "8GiB"     # CPU memory cap per trial (RLIMIT_DATA)'))
    runner.add(tomlkit.comment("gpu_memory_fraction = 0.5"))
    doc.add("runner", runner)
    sp = tomlkit.table()
    sp.add(
        "exclude", sorted(n for n, why in getattr(space, "skipped", {}).items() if why == "excluded in centaur.toml")
    )
    sp.add("constraints", [c.expression for c in space.constraints])
    params = tomlkit.table(is_super_table=True)
    for p in space:
        t = tomlkit.table()
        if p.help:
            t.comment(p.help)
        t.add("type", p.kind)
        if p.kind == "categorical":
            t.add("choices", list(p.choices))
        else:
            t.add("low", p.low)
            t.add("high", p.high)
            if p.kind != "pow2":
                t.add("log", p.log)
        params.add(p.name, t)
    sp.add("params", params)
    doc.add("space", sp)
    if space.constants:
        doc.add("constants", {k: v for k, v in space.constants.items() if isinstance(v, (int, float, str, bool))})
    path = script.parent / CONFIG_NAME
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path
