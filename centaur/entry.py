"""What an entry point (the `centaur` command, a worker process it starts) sets up for itself. The library
never does this on import: a program that imports centaur keeps Optuna's and logging's settings as it set them."""

from __future__ import annotations

import optuna


def quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created ...", "Trial N finished ...") repeat what our own progress
    display says; an entry point turns them down to warnings for its own process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
