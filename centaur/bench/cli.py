"""`centaur bench`: run a grid of studies (methods x seeds) on one task, then print the table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)


def bench(
    task: Annotated[str, typer.Option(help="'surrogate[:TRIALS.json]', 'gpt' (bundled CPU task) or a script path")
                    ] = "surrogate",
    methods: Annotated[str, typer.Option(help="comma-separated methods (see `centaur methods`)")] = "random,tpe,cmaes",
    seeds: Annotated[str, typer.Option(help="seeds, e.g. 0-9 or 0,2,5")] = "0-9",
    budget: Annotated[str, typer.Option(help="budget of each study, e.g. 24h (simulated for the surrogate)")] = "24h",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="parallel worker processes")] = 2,
    bench_dir: Annotated[Path, typer.Option("--dir", help="bench directory (storage, surrogate cache, trial runs)")
                         ] = Path("centaur-bench"),
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: journal:DIR/bench.journal)")] = None,
    penalty: Annotated[float, typer.Option(help="objective value failed trials are told with")] = 100.0,
    in_memory: Annotated[bool | None, typer.Option(
        "--in-memory/--direct", help="run each study in memory and store it when done (default for the "
        "surrogate), or write every trial to the storage as it runs (default for scripts)")] = None,
    report: Annotated[Path | None, typer.Option(help="also write a report into this directory")] = None,
) -> None:
    """Run one study per (method, seed) on TASK into one storage. Rerunning resumes; finished studies are kept."""
    from centaur.bench.grid import parse_methods, parse_seeds
    from centaur.bench.progress import RichBenchProgress
    from centaur.bench.runner import run_bench
    from centaur.errors import USER_ERRORS
    from centaur.report.collect import runs_from_storage
    from centaur.report.stats import method_table

    shown = RichBenchProgress(err)
    try:
        result = run_bench(task, parse_methods(methods), parse_seeds(seeds), budget, bench_dir=bench_dir,
                           storage=storage, jobs=jobs, penalty=penalty, in_memory=in_memory, progress=shown)
    except USER_ERRORS as e:
        shown.close()
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    shown.close()
    names = set(result.study_names)
    runs = [r for r in runs_from_storage(result.storage) if r.name in names]
    table = Table(title=f"{result.task}: {len(runs)} of {len(names)} studies in {result.storage}")
    for col in ("method", "seeds", "best (mean ± std)", "noise-free at best", "OOM%", "trials", "s / study"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    for r in method_table(runs):
        nf = f"{r.noise_free_mean:.4f} ± {r.noise_free_std:.4f}" if r.noise_free_mean is not None else "-"
        secs = f"{r.seconds_mean:.2f} ± {r.seconds_std:.2f}" if r.seconds_mean is not None else "-"
        table.add_row(r.method, str(r.n_seeds), f"{r.best_mean:.4f} ± {r.best_std:.4f}", nf, f"{r.fail_pct:.1f}",
                      f"{r.trials_mean:.1f}", secs)
    console.print(table)
    if result.interrupted:
        err.print("[yellow]interrupted:[/] run the same command again to finish the remaining studies")
        raise typer.Exit(1)
    if report is not None:
        from centaur.report.render import build_report

        rep = build_report(runs, report, title=f"Benchmark: {result.task}", source=result.storage)
        console.print(f"wrote {rep.markdown} and {rep.html}")
