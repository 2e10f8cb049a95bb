"""Seconds per simulated 24 h surrogate study for each classical method, where the time goes, and the
surrogate's prediction latency.

    python benchmarks/bench_speed.py --trials ../shared/data/paper_trials_seeds01.json \
        [--methods random,tpe,cmaes] [--seeds 2] [--budget 24h] [--dir DIR]

Each study runs in this process exactly as `centaur bench` runs it in a worker (centaur.tune on an
in-memory storage), then is copied into a journal file as the harness stores it. Columns: wall seconds
of the study; inside it, the seconds the sampler took to propose (trial attr sampler_s) and the surrogate
took to answer (surrogate_ms); "loop" is the rest (study loop bookkeeping, Optuna storage calls); "store"
is copying the finished study into the bench storage.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from rich.console import Console
from rich.table import Table

from centaur.bench.grid import Cell
from centaur.bench.runner import CellJob, _store, run_cell
from centaur.bench.tasks import load_task, prepare_task
from centaur.study.storage import open_storage
from centaur.units import parse_duration

optuna.logging.set_verbosity(optuna.logging.ERROR)
console = Console(width=160)


def latency(spec, n: int = 300) -> tuple[float, float, float]:
    """Median and p95 ms of one SurrogateTask.evaluate call, and ms per config in a batch of N."""
    task = load_task(spec, seed=0)
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    configs = [task.space.suggest(study.ask()) for _ in range(n)]
    times = []
    for i, c in enumerate(configs):
        t0 = time.perf_counter()
        task.evaluate(c, trial_number=i, run_dir=Path("."))
        times.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    task.model.evaluate_batch(configs, rng=np.random.default_rng(0))
    batch_ms = (time.perf_counter() - t0) * 1e3 / n
    return float(np.median(times)), float(np.percentile(times, 95)), batch_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", required=True, help="the reference study's trials file")
    ap.add_argument("--methods", default="random,tpe,cmaes")
    ap.add_argument("--seeds", type=int, default=2, help="studies per method (seeds 0..N-1)")
    ap.add_argument("--budget", default="24h")
    ap.add_argument("--dir", default=None, help="bench dir for the fitted-model cache (default: a temp dir)")
    args = ap.parse_args()
    bench_dir = Path(args.dir or tempfile.mkdtemp(prefix="centaur-bench-speed-"))
    t0 = time.perf_counter()
    spec = prepare_task(f"surrogate:{args.trials}", bench_dir)
    console.print(f"surrogate ready in {time.perf_counter() - t0:.1f} s (fit, or load from {bench_dir})")
    med, p95, batch = latency(spec)
    console.print(f"surrogate prediction latency: {med:.2f} ms median, {p95:.2f} ms p95 per single call; "
                  f"{batch:.3f} ms per config in a batch of 300")
    budget_s = parse_duration(args.budget)
    table = Table(title=f"seconds per simulated {args.budget} study ({args.seeds} seed(s) each, one process)")
    for col in ("method", "trials", "wall s / study", "sampler s", "surrogate s", "loop s", "store s"):
        table.add_column(col, justify="right")
    storage = open_storage(f"journal:{bench_dir / 'speed.journal'}")
    for method in args.methods.split(","):
        rows = []
        for seed in range(args.seeds):
            name = f"speed-{method}-seed{seed}-{time.time_ns()}"
            out = run_cell(CellJob(spec, Cell(method, seed), name, budget_s, 100.0, None, str(bench_dir / "runs")))
            trials = out.trials or []
            sampler = sum(t.user_attrs.get("sampler_s", 0.0) for t in trials)
            surrogate = sum(t.user_attrs.get("surrogate_ms", 0.0) for t in trials) / 1e3
            store = _store(out, storage)
            rows.append((len(trials), out.seconds, sampler, surrogate, out.seconds - sampler - surrogate, store))
        cols = list(zip(*rows, strict=True))
        mean = [statistics.mean(c) for c in cols]
        table.add_row(method, f"{mean[0]:.0f}", f"{mean[1]:.2f}" + (f" ± {statistics.pstdev(cols[1]):.2f}"
                                                                     if len(rows) > 1 else ""),
                      *(f"{m:.2f}" for m in mean[2:]))
    console.print(table)


if __name__ == "__main__":
    main()
