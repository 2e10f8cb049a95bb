"""Trial trackers: Optuna-style callbacks `callback(study, trial)` called after every finished trial, and the
built-in MLflow and Weights & Biases loggers (one run per trial, the study as its parent or group)."""

from centaur.tracking.callbacks import Callback, TrackingSettings, build_trackers, notify
from centaur.tracking.record import TrialPayload, payload

__all__ = ["Callback", "TrackingSettings", "TrialPayload", "build_trackers", "notify", "payload"]
