"""Live progress display of a tuning run (rich)."""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from centaur.study.records import StudySummary, status_of
from centaur.units import format_duration


class RichProgress:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.bar = Progress(
            TextColumn("[bold]budget"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task_id = self.bar.add_task("", total=1.0)
        self.line = Text("")
        self.live = Live(Group(self.bar, self.line), console=self.console, refresh_per_second=4)

    def _update(self, s: StudySummary, current: str = "") -> None:
        if s.budget_s:
            self.bar.update(
                self.task_id,
                completed=min(s.used_s, s.budget_s),
                total=s.budget_s,
                description=f"{format_duration(s.used_s)} / {format_duration(s.budget_s)}",
            )
        else:  # stopped by --n-trials only
            self.bar.update(self.task_id, total=None, description=f"{format_duration(s.used_s)} (no budget set)")
        fails = ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items())) or "none"
        best = f"{s.best_metric:.6f} (trial {s.best_trial})" if s.best_metric is not None else "-"
        self.line = Text(f"trials {s.n_finished}  best {best}  failures: {fails}  {current}")
        self.live.update(Group(self.bar, self.line))

    def on_start(self, summary: StudySummary) -> None:
        self.live.start()
        self.summary = summary
        self._update(summary, "(resumed)" if summary.n_finished else "")

    def on_trial_start(self, number: int, config: dict[str, Any]) -> None:
        self._update(self.summary, f"| running trial {number}")

    def on_trial_end(self, trial: FrozenTrial, summary: StudySummary) -> None:
        self.summary = summary
        value = f"{trial.value:.6f}" if status_of(trial) == "ok" and trial.value is not None else status_of(trial)
        verdict = trial.user_attrs.get("verified", "verified")  # the values that ran (centaur.runner.verify)
        if status_of(trial) not in ("ok", "overridden"):
            verdict = "verified"  # a failure's values gave no result: no mark
        self.live.console.print(
            f"trial {trial.number:4d}  {value:>10}  cost {format_duration(trial.user_attrs.get('cost_s', 0))}"
            f"  source {trial.user_attrs.get('proposal_source', '')}"
            + ("" if verdict == "verified" else f"  {verdict}"),
            markup=False, highlight=False,
        )
        self._update(summary)

    def on_notice(self, line: str) -> None:
        self.console.print(Text.assemble(("note:", "yellow"), " ", line), highlight=False)

    def on_stop(self, reason: str, summary: StudySummary) -> None:
        self._update(summary)
        self.live.stop()
        if not self.console.is_terminal:
            self.console.line()  # off a terminal, Live leaves its last line open
        self.console.print(f"stopped: {reason}", highlight=False)
