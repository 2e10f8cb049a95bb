"""The one place that touches Nevergrad's internals: its metamodel step on NumPy >= 2.4.

Nevergrad 1.0.12 (the latest release) converts a length-1 prediction to a float with `float(array)`
inside `metamodel.learn_on_k_best`; NumPy 2.4 turned that conversion into a TypeError, so any
optimizer that NGOpt builds with a metamodel (continuous spaces, e.g. a one-parameter study) crashes
at the step where it would learn one (nevergrad issue 1612 reported the deprecation). Nevergrad
already has a fallback for a metamodel that cannot be learned: `MetaModelFailure`, after which the
wrapped optimizer asks as usual. `patch()` routes exactly that TypeError to the fallback; every other
error passes through. tests/test_peers.py fails when the names patched here move.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

_SCALAR_ERROR = "only 0-dimensional arrays can be converted to Python scalars"
_PATCHED = "_centaur_numpy24"


def patch() -> None:
    """Wrap `optimizerlib.learn_on_k_best` once per process (idempotent)."""
    from nevergrad.optimization import metamodel, optimizerlib

    original = optimizerlib.learn_on_k_best
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def learn_on_k_best(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except TypeError as e:
            if _SCALAR_ERROR not in str(e):
                raise
            log.debug("nevergrad's metamodel step hit NumPy >= 2.4's scalar conversion; its fallback asks")
            raise metamodel.MetaModelFailure(str(e)) from e

    setattr(learn_on_k_best, _PATCHED, True)
    optimizerlib.learn_on_k_best = learn_on_k_best
