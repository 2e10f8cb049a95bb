"""Launcher run in the trial subprocess: applies limits that must be set inside the process before
the user's script starts (a CUDA memory fraction), then runs the script as __main__.

Usage: python -m centaur.runner.launch [--verify SPEC] SCRIPT [ARGS...]

With `--verify`, the values the script really used are recorded beside SPEC (centaur.runner.observe).
"""

from __future__ import annotations

import os
import sys

from centaur.runner.observe import run_observed


def _apply_gpu_memory_fraction() -> None:
    fraction = os.environ.get("CENTAUR_CUDA_MEM_FRACTION")
    if not fraction:
        return
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(float(fraction), device)


def main() -> None:
    args = sys.argv[1:]
    spec = None
    if args[:1] == ["--verify"] and len(args) >= 2:
        spec, args = args[1], args[2:]
    if not args:
        sys.exit("usage: python -m centaur.runner.launch [--verify SPEC] SCRIPT [ARGS...]")
    script = os.path.abspath(args[0])
    _apply_gpu_memory_fraction()
    sys.argv = [script, *args[1:]]
    run_observed(script, spec)


if __name__ == "__main__":
    main()
