"""The bundled GPT task: `train.py` (run as a script from this directory), its data in `prepare.py`,
and its CPU-scale search space in `centaur.toml`."""

from __future__ import annotations

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
TRAIN_SCRIPT = TASK_DIR / "train.py"
PREPARE_SCRIPT = TASK_DIR / "prepare.py"
CONFIG_FILE = TASK_DIR / "centaur.toml"

__all__ = ["CONFIG_FILE", "PREPARE_SCRIPT", "TASK_DIR", "TRAIN_SCRIPT"]
