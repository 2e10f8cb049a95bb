"""Weights & Biases: one run per trial, grouped by study; offline by default (`wandb sync` uploads later)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from centaur.tracking.errors import TrackerUnavailable
from centaur.tracking.record import payload


class WandbTracker:
    """Logs each finished trial as a W&B run in `project`, grouped by the study: its configuration in the
    script's units, the metrics in the summary, status/source/verified tags, `trial.log` as an artifact."""

    __name__ = "wandb"

    def __init__(self, project: str, mode: str = "offline", dir: Any = None) -> None:  # noqa: A002 - wandb's name
        try:
            import wandb
        except ImportError:
            hint = "--wandb needs Weights & Biases: pip install 'centaur-hpo[tracking]' (or wandb)"
            raise TrackerUnavailable(hint) from None
        self._wandb = wandb
        self.project = project
        self.mode = mode
        self.dir = Path(dir) if dir is not None else None
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        p = payload(trial)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        tags = [f"{k}:{v}"[:64] for k, v in p.tags.items() if k != "error" and v]
        with self._lock:
            run = self._wandb.init(
                project=self.project, group=study.study_name, job_type="trial",
                name=f"{study.study_name}-trial-{p.number:05d}", config={**p.params, "trial": p.number},
                tags=tags, mode=self.mode, dir=str(self.dir) if self.dir else None, reinit="create_new",
                settings=self._wandb.Settings(silent=True, console="off"),
            )  # fmt: skip
            try:
                run.summary.update({**p.metrics, "status": p.status})
                if "error" in p.tags:
                    run.summary["error"] = p.tags["error"]
                if p.log is not None:
                    artifact = self._wandb.Artifact(f"trial-log-{p.number:05d}", type="trial-log")
                    artifact.add_file(str(p.log))
                    run.log_artifact(artifact)
            finally:
                run.finish(exit_code=0 if p.ok else 1)
