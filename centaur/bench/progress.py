"""Live display of a benchmark (rich): overall studies done, one bar per running study, a line per finished one."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from centaur.bench.runner import CellOutcome
from centaur.units import format_duration


class RichBenchProgress:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.overall: TaskID | None = None
        self.running: dict[str, TaskID] = {}

    def on_plan(self, todo: list[str], done: list[str]) -> None:
        if done:
            self.console.print(f"{len(done)} stud{'y' if len(done) == 1 else 'ies'} already complete (kept)")
        self.progress.start()
        self.overall = self.progress.add_task("[bold]studies", total=len(todo), info="")

    def on_update(self, name: str, used_s: float, budget_s: float, n_trials: int, best: float | None) -> None:
        if name not in self.running:
            self.running[name] = self.progress.add_task(name, total=int(budget_s), info="")
        best_txt = f"best {best:.4f}" if best is not None else "no success yet"
        self.progress.update(self.running[name], completed=int(min(used_s, budget_s)),
                             info=f"{n_trials} trials, {best_txt}, {format_duration(used_s)} used")

    def on_cell_end(self, o: CellOutcome) -> None:
        task = self.running.pop(o.study_name, None)
        if task is not None:
            self.progress.remove_task(task)
        best = f"{o.best:.6f}" if o.best is not None else "-"
        state = "done" if o.complete else f"[yellow]stopped ({o.stop_reason})[/]"
        self.progress.console.print(f"{o.study_name}: {state}, {o.n_trials} trials, best {best}, "
                                    f"{o.seconds:.1f} s (+{o.store_seconds:.1f} s to store)")
        if self.overall is not None:
            self.progress.advance(self.overall)

    def close(self) -> None:
        self.progress.stop()
