"""Torch's intra-op threads while a GP-based method (gp, hebo) proposes.

Torch starts one intra-op thread per core. A GP over a few hundred trials works on tensors too small for
threads to pay, and on a machine whose cores are busy (trials, other workers, a bench) the threads spin-wait
against each other: Optuna's GPSampler on the surrogate took 5.3 s a proposal with torch's 2 threads and 1.8 s
with one, on the 2-core machine beside two other jobs (docs/samplers.md, "Torch threads"). So a
proposal runs with `threads` torch threads (default 1; 0 leaves torch's setting) and the process's setting is
put back when the last concurrent proposal ends: nothing outside a proposal changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_THREADS = 1

_lock = threading.Lock()
_active = 0
_saved: int | None = None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads (0: unchanged); nested and concurrent blocks share it."""
    global _active, _saved
    if n <= 0:
        yield
        return
    import torch

    with _lock:
        if _active == 0:
            _saved = torch.get_num_threads()
            if _saved != n:
                torch.set_num_threads(n)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                if torch.get_num_threads() != _saved:
                    torch.set_num_threads(_saved)
                _saved = None


def threads_option(options: dict[str, Any]) -> int:
    """The `threads` method option of `options`: the default when absent; refuses a negative count by name."""
    from centaur.methods.base import MethodError, typed_option

    value = typed_option(options, "threads", int, DEFAULT_THREADS)
    if value < 0:
        raise MethodError(f"method option threads must be >= 0 (0 leaves torch's setting), got {value} "
                          "(-o threads=...)")
    return value
