"""The optional package each method needs, for the tests that skip a method whose extra is not installed."""

from __future__ import annotations

import pytest

PACKAGE = {"smac": "smac", "gp": "torch", "ngopt": "nevergrad", "hebo": "hebo"}  # method -> its import name


def skip_without_package(method: str) -> None:
    """Skip the calling test when `method` needs a package that is not installed (no-op otherwise)."""
    if method in PACKAGE:
        pytest.importorskip(PACKAGE[method])
