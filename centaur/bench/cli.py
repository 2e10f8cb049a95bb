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
    instrument: Annotated[bool, typer.Option(
        "--instrument/--no-instrument", help="on the surrogate: compute (once, 1-3 min; cached beside the model) "
        "and attach its resolution record: leave-one-run-out error, best known value, baseline")] = True,
) -> None:
    """Run one study per (method, seed) on TASK into one storage. Rerunning resumes; finished studies are kept."""
    from centaur.bench.grid import parse_methods, parse_seeds
    from centaur.bench.progress import RichBenchProgress
    from centaur.bench.runner import run_bench
    from centaur.errors import USER_ERRORS
    from centaur.report.collect import runs_from_storage
    from centaur.report.render import instrument_text
    from centaur.report.stats import instruments, method_table

    shown = RichBenchProgress(err)
    try:
        result = run_bench(task, parse_methods(methods), parse_seeds(seeds), budget, bench_dir=bench_dir,
                           storage=storage, jobs=jobs, penalty=penalty, in_memory=in_memory, progress=shown,
                           instrument=instrument, notes=lambda msg: err.print(f"[dim]instrument: {escape(msg)}[/]"))
    except USER_ERRORS as e:
        shown.close()
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    shown.close()
    names = set(result.study_names)
    runs = [r for r in runs_from_storage(result.storage) if r.name in names]
    console.print(f"[bold]{escape(result.task)}[/]: {len(runs)} of {len(names)} studies in {escape(result.storage)}",
                  highlight=False)
    table = Table(box=None, header_style="bold")  # no rules: the table fits 80 columns
    rows = method_table(runs)
    # On the surrogate the noise-free value is the honest one (the observed best is in the report);
    # regret needs the surrogate's instrument record.
    noise_free = any(r.noise_free_mean is not None for r in rows)
    regret = any(r.regret_mean is not None for r in rows)
    columns = ["method", "seeds", "noise-free" if noise_free else "best", *(["regret"] if regret else []),
               "OOM%", "trials", "s/study"]
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for r in rows:
        best = _pm(r.noise_free_mean, r.noise_free_std, 4) if noise_free else _pm(r.best_mean, r.best_std, 4)
        reg = [_pm(r.regret_mean, r.regret_std, 3)] if regret else []
        table.add_row(r.method, str(r.n_seeds), best, *reg, f"{r.fail_pct:.1f}", f"{r.trials_mean:.0f}",
                      _pm(r.seconds_mean, r.seconds_std, 1))
    console.print(table)
    for inst in instruments(runs):
        console.print()
        text = instrument_text(inst, strong=lambda t: f"[bold]{t}[/]", emph=lambda t: f"[italic]{t}[/]")
        console.print(f"[bold]Instrument resolution.[/] {text}", highlight=False)
    if result.interrupted:
        err.print("[yellow]interrupted:[/] run the same command again to finish the remaining studies")
        raise typer.Exit(1)
    if report is not None:
        from centaur.report.render import build_report

        rep = build_report(runs, report, title=f"Benchmark: {result.task}", source=result.storage)
        console.print(f"wrote {rep.markdown} and {rep.html}")


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    return "-" if mean is None else f"{mean:.{digits}f}±{std or 0.0:.{digits}f}"
