"""`centaur bench` for methods with options, e.g. how gp does when told failures as the penalty (the
reference protocol) rather than as constraint violations:

    python benchmarks/method_variants.py --task surrogate:../shared/data/paper_trials_seeds01.json \
        --variants gp:failures=penalty,tpe-optuna:failures=penalty --seeds 0-2 --dir bench-peers

`centaur bench --methods` takes names only. Each variant `METHOD:KEY=VALUE[:KEY=VALUE...]` is registered
in this process as a method named `METHOD@KEY=VALUE...` (the registered method with those options), and
the grid runs in this process (one job), into the same bench directory and storage as `centaur bench`,
which it resumes the same way. Then the bench's per-method table is printed for every study in the
storage; `centaur report DIR` gives the full report.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console
from rich.table import Table

from centaur.bench.grid import parse_seeds
from centaur.bench.runner import run_bench
from centaur.methods.base import MethodContext, method_info, register
from centaur.report.collect import runs_from_storage
from centaur.report.stats import method_table

console = Console(width=160)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    method, *pairs = text.split(":")
    options = dict(pair.split("=", 1) for pair in pairs)
    return method, options


def register_variant(text: str) -> str:
    """Register `METHOD:K=V...` as a method of its own; returns its name (a plain METHOD is itself)."""
    method, options = parse_variant(text)
    base = method_info(method)
    if not options:
        return method
    name = method + "@" + ",".join(f"{k}={v}" for k, v in sorted(options.items()))

    def factory(ctx: MethodContext) -> Any:
        return base.factory(dataclasses.replace(ctx, options={**ctx.options, **options}))

    register(name, f"{base.summary} [{', '.join(f'{k}={v}' for k, v in options.items())}]",
             sequential=base.sequential, failures=options.get("failures", base.failures))(factory)  # fmt: skip
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--variants", required=True, help="comma-separated METHOD[:KEY=VALUE...] (plain METHODs too)")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--budget", default="24h")
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    names = [register_variant(v) for v in args.variants.split(",") if v]
    result = run_bench(args.task, names, parse_seeds(args.seeds), args.budget, bench_dir=args.dir, jobs=1)
    table = Table(title=f"{result.task}: every study in {result.storage}")
    for col in ("method", "seeds", "best (mean ± std)", "noise-free at best", "OOM%", "trials", "s / study"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in method_table(runs_from_storage(result.storage)):
        nf = f"{r.noise_free_mean:.4f} ± {r.noise_free_std:.4f}" if r.noise_free_mean is not None else "-"
        secs = f"{r.seconds_mean:.1f} ± {r.seconds_std:.1f}" if r.seconds_mean is not None else "-"
        table.add_row(r.method, str(r.n_seeds), f"{r.best_mean:.4f} ± {r.best_std:.4f}", nf, f"{r.fail_pct:.1f}",
                      f"{r.trials_mean:.1f}", secs)  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
