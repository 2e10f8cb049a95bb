"""Centaur: hyperparameter tuning of training scripts under a compute budget."""

from centaur.api import resolve_task, tune

__all__ = ["resolve_task", "tune"]
__version__ = "0.1.0"
