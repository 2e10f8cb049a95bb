"""Launcher run in the trial subprocess: applies limits that must be set inside the process before
the user's script starts (a CUDA memory fraction), then runs the script as __main__.

Usage: python -m centaur.runner.launch SCRIPT [ARGS...]
"""

from __future__ import annotations

import os
import runpy
import sys


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
    if len(sys.argv) < 2:
        sys.exit("usage: python -m centaur.runner.launch SCRIPT [ARGS...]")
    script = os.path.abspath(sys.argv[1])
    _apply_gpu_memory_fraction()
    sys.argv = [script, *sys.argv[2:]]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
