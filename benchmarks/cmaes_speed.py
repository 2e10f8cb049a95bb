"""Seconds per simulated 24 h surrogate study of `cmaes` (with its out-of-memory model) and `cmaes-optuna`,
and the best values, so the speed of the OOM-aware search can be measured again (issue 20, item 8).

    python benchmarks/cmaes_speed.py --trials ../shared/data/paper_trials_seeds01.json \
        [--methods cmaes,cmaes-optuna] [--seeds 0-2] [--budget 24h] [--dir DIR] \
        [--save RUN.json] [--compare RUN.json]

Each study runs in this process, one after the other, exactly as a `centaur bench` worker runs it
(centaur.tune on an in-memory storage); the time is the study's wall time, without storing it. `--save`
writes every study's trial sequence (params, value, status); `--compare` checks a run against a saved
one: the same code, or a change meant to be only faster, gives the same trials seed for seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table

from centaur.bench.grid import Cell, parse_seeds
from centaur.bench.runner import CellJob, run_cell
from centaur.bench.tasks import prepare_task
from centaur.units import parse_duration

optuna.logging.set_verbosity(optuna.logging.ERROR)
console = Console(width=100)


def run(spec: Any, method: str, seed: int, budget_s: float, run_dir: Path) -> dict[str, Any]:
    name = f"speed-{method}-seed{seed}-{time.time_ns()}"
    out = run_cell(CellJob(spec, Cell(method, seed), name, budget_s, 100.0, None, str(run_dir)))
    trials = out.trials or []
    return {"seconds": out.seconds, "best": out.best, "n": len(trials),
            "sampler_s": sum(t.user_attrs.get("sampler_s", 0.0) for t in trials),
            "trials": [[t.params, t.value, t.user_attrs.get("status")] for t in trials]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", required=True, help="the reference study's trials file")
    ap.add_argument("--methods", default="cmaes,cmaes-optuna")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--budget", default="24h")
    ap.add_argument("--dir", default=None, help="bench dir for the fitted-model cache (default: a temp dir)")
    ap.add_argument("--save", type=Path, help="write the trial sequences here (JSON)")
    ap.add_argument("--compare", type=Path, help="a --save file to check the trial sequences against")
    args = ap.parse_args()
    bench_dir = Path(args.dir or tempfile.mkdtemp(prefix="centaur-cmaes-speed-"))
    spec = prepare_task(f"surrogate:{args.trials}", bench_dir)
    budget_s, seeds = parse_duration(args.budget), parse_seeds(args.seeds)
    # A first, untimed study of each method pays the one-off imports (LLM client, samplers) that every
    # worker process pays once, not per study.
    for method in args.methods.split(","):
        run(spec, method, seeds[0], 3600.0, bench_dir / "runs")
    results: dict[str, dict[str, Any]] = {}
    table = Table(title=f"seconds per simulated {args.budget} study (one process, studies in turn)")
    for col in ("method", "seed", "trials", "s / study", "sampler s", "best"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method in args.methods.split(","):
        for seed in seeds:
            r = results.setdefault(method, {})[str(seed)] = run(spec, method, seed, budget_s, bench_dir / "runs")
            table.add_row(method, str(seed), str(r["n"]), f"{r['seconds']:.2f}", f"{r['sampler_s']:.2f}",
                          f"{r['best']:.6f}")
        secs = [r["seconds"] for r in results[method].values()]
        table.add_row(f"{method} (mean)", "", "", f"{statistics.mean(secs):.2f}", "", "", style="bold")
    console.print(table)
    if args.save:
        args.save.write_text(json.dumps(results))
        console.print(f"trial sequences written to {args.save}")
    if args.compare:
        saved = json.loads(args.compare.read_text())
        for method, by_seed in results.items():
            for seed, r in by_seed.items():
                old = saved.get(method, {}).get(seed)
                if old is None:
                    console.print(f"{method} seed {seed}: not in {args.compare}")
                    continue
                same = old["trials"] == r["trials"]
                console.print(f"{method} seed {seed}: {'same' if same else 'DIFFERENT'} trials "
                              f"({len(old['trials'])} saved, {r['n']} now), best {old['best']:.6f} -> "
                              f"{r['best']:.6f}, {old['seconds']:.2f} s -> {r['seconds']:.2f} s")


if __name__ == "__main__":
    main()
