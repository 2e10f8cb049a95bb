"""Centaur: hyperparameter tuning of training scripts under a compute budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from centaur.api import resolve_task, tune

__all__ = ["resolve_task", "tune"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: every trial process imports centaur.runner.launch, which must not pay for Optuna and the
    # methods before the user's script starts.
    if name in __all__:
        from centaur import api

        return getattr(api, name)
    raise AttributeError(f"module 'centaur' has no attribute {name!r}")
