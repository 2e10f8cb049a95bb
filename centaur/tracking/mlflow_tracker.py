"""MLflow: one run per trial, nested under one run per study (found again by its tag on a resume)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from centaur.tracking.errors import TrackerUnavailable
from centaur.tracking.record import payload

STUDY_TAG = "centaur.study"


class MlflowTracker:
    """Logs each finished trial as a child run of the study's run in `experiment`: its parameters in the
    script's units, the metrics, status/source/verified tags, and `trial.log` as an artifact."""

    __name__ = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str = "centaur") -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            hint = "--mlflow needs MLflow: pip install 'centaur-hpo[tracking]' (or mlflow-skinny)"
            raise TrackerUnavailable(hint) from None
        self.uri = tracking_uri
        self.experiment = experiment
        self._client_class = MlflowClient
        self._client: Any = None
        self._parents: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_class(tracking_uri=self.uri)
        return self._client

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        # A local SQLite store keeps its artifacts beside the database, not in ./mlruns of whatever folder
        # the tuner runs from; a server decides for itself.
        location = None
        if self.uri.startswith("sqlite:///"):
            database = Path(self.uri[len("sqlite:///"):].partition("?")[0])
            location = (database.parent / "mlflow-artifacts").resolve().as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def _parent(self, experiment_id: str, study: optuna.Study) -> str:
        name = study.study_name
        if name not in self._parents:
            escaped = name.replace("'", "\\'")
            runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{escaped}'",
                                           max_results=1)  # fmt: skip
            if runs:
                self._parents[name] = runs[0].info.run_id
            else:
                tags = {STUDY_TAG: name, **{f"centaur.{k}": str(v) for k, v in study.user_attrs.items()
                                            if k in ("method", "seed", "task", "budget_s")}}  # fmt: skip
                self._parents[name] = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        return self._parents[name]

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, Param, RunTag

        p = payload(trial)
        with self._lock:
            experiment_id = self._experiment_id()
            parent = self._parent(experiment_id, study)
            tags = {"mlflow.parentRunId": parent, STUDY_TAG: study.study_name, "centaur.trial": str(p.number),
                    **{f"centaur.{k}": v for k, v in p.tags.items()}}  # fmt: skip
            run = self.client.create_run(experiment_id, run_name=f"{study.study_name}-trial-{p.number:05d}", tags=tags)
            run_id = run.info.run_id
            try:
                now = int(time.time() * 1000)
                self.client.log_batch(
                    run_id,
                    metrics=[Metric(k, v, now, 0) for k, v in p.metrics.items()],
                    params=[Param(k, str(v)[:6000]) for k, v in p.params.items()],
                    tags=[RunTag("centaur.status", p.status)],
                )
                if p.log is not None:
                    self.client.log_artifact(run_id, str(p.log))
            finally:
                self.client.set_terminated(run_id, "FINISHED" if p.ok else "FAILED")
                self.client.set_terminated(parent, "FINISHED")  # the study's run: done until it resumes
