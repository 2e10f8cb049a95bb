"""`centaur report`: Markdown + HTML report with figures, from a bench/tune storage or the study's trial file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def report(
    targets: Annotated[list[str] | None, typer.Argument(
        metavar="TARGET...", help="bench or run directories, SQLite files or storage URLs (their studies are merged)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to write report.md/.html and PNGs")
                      ] = Path("report"),
    from_trials: Annotated[Path | None, typer.Option("--from-trials", help="build the report from the reference "
                                                     "study's trials file ({method: {seed: [trial, ...]}})")] = None,
    budget: Annotated[str, typer.Option(help="budget cut for --from-trials")] = "24h",
    title: Annotated[str | None, typer.Option(help="report title")] = None,
) -> None:
    """Write a report: per-method table, convergence, incumbents, average rank, paired statistics."""
    from centaur.errors import USER_ERRORS
    from centaur.report.collect import ReportInputError, runs_from_storage, runs_from_trials_file
    from centaur.report.render import build_report
    from centaur.units import parse_duration

    try:
        if bool(targets) == (from_trials is not None):
            raise ReportInputError("give either a storage/directory or --from-trials FILE")
        if from_trials is not None:
            runs = runs_from_trials_file(from_trials, parse_duration(budget))
            source, default_title = str(from_trials), "Reference study: trials file"
        else:
            runs = [run for target in targets or [] for run in runs_from_storage(target)]
            seen: dict[tuple[str, str, int], str] = {}
            for run in runs:
                key = (run.task, run.method, run.seed)
                if key in seen:
                    raise ReportInputError(f"{run.method} seed {run.seed} on {run.task} is in two targets "
                                           f"(studies {seen[key]!r} and {run.name!r}); give each study once")
                seen[key] = run.name
            source, default_title = ", ".join(targets or []), "Study report"
        rep = build_report(runs, output, title=title or default_title, source=source)
    except USER_ERRORS as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"wrote {rep.markdown}, {rep.html} and {len(rep.figures)} figures")
