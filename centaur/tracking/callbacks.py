"""Calling trackers after each trial, so that one that fails never loses or stops the study."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

Callback = Callable[[optuna.Study, FrozenTrial], None]  # Optuna's callback signature


@dataclass(frozen=True)
class TrackingSettings:
    """`[tracking]` of centaur.toml, or `--mlflow URI` / `--wandb PROJECT`: stored with the study, so that
    every worker logs alike."""

    mlflow: str | None = None  # a tracking URI: sqlite:///mlflow.db, http://host:5000, ...
    mlflow_experiment: str = "centaur"
    wandb: str | None = None  # a project
    wandb_mode: str = "offline"  # offline (synced later with `wandb sync`) | online

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, where: str = "[tracking]") -> TrackingSettings:
        data = dict(data or {})
        known = {"mlflow", "mlflow_experiment", "wandb", "wandb_mode"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
        for key in known & set(data):
            if not isinstance(data[key], str) or not data[key].strip():
                raise ValueError(f"{where}: {key} must be a non-empty string, got {data[key]!r}")
        if data.get("wandb_mode", "offline") not in ("offline", "online"):
            raise ValueError(f"{where}: wandb_mode must be 'offline' or 'online', got {data['wandb_mode']!r}")
        return cls(**data)

    @property
    def active(self) -> bool:
        return bool(self.mlflow or self.wandb)

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


def build_trackers(settings: TrackingSettings, run_dir: Any) -> list[Callback]:
    """The trackers the settings name (their packages are imported here: a missing one is named)."""
    trackers: list[Callback] = []
    if settings.mlflow:
        from centaur.tracking.mlflow_tracker import MlflowTracker

        trackers.append(MlflowTracker(settings.mlflow, experiment=settings.mlflow_experiment))
    if settings.wandb:
        from centaur.tracking.wandb_tracker import WandbTracker

        trackers.append(WandbTracker(settings.wandb, mode=settings.wandb_mode, dir=run_dir))
    return trackers


def notify(callbacks: Sequence[Callback], study: optuna.Study, trial: FrozenTrial) -> None:
    """Call every callback with the finished trial; one that raises is logged, never raised: the trial is
    already recorded, and the study goes on."""
    for callback in callbacks:
        try:
            callback(study, trial)
        except Exception as e:  # noqa: BLE001 - a tracker's failure must not stop days of GPU time
            name = getattr(callback, "__name__", type(callback).__name__)
            log.warning("tracker %s failed on trial %d (the study goes on): %s: %s", name, trial.number,
                        type(e).__name__, e)  # fmt: skip
