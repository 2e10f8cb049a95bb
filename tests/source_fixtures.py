"""The script fixtures of the parameter-source tests (tests/fixtures/sources), shared by the source and
config-source tests."""

from __future__ import annotations

import shutil
from pathlib import Path

SOURCES = Path(__file__).parent / "fixtures" / "sources"


def copy(name: str, tmp_path: Path) -> Path:
    """A fresh copy of fixture `name` under tmp_path; its train.py."""
    target = tmp_path / name
    shutil.copytree(SOURCES / name, target)
    return target / "train.py"


def ok_trials(result) -> list:
    return [t for t in result.study.get_trials() if t.user_attrs.get("status") == "ok"]
