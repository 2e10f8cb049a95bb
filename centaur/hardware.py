"""A one-line description of the machine trials run on, for reports and LLM prompts."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import psutil


@cache
def gpu_names(visible: str | None = None) -> list[tuple[str, float]]:
    """(name, memory GiB) of the GPUs nvidia-smi reports; empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, mem = (x.strip() for x in line.rsplit(",", 1))
        gpus.append((name, float(mem) / 1024))
    return gpus


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def describe_hardware(memory_cap_bytes: int | None = None, gpu_memory_fraction: float | None = None) -> str:
    gpus = gpu_names()
    if gpus:
        name, mem = gpus[0]
        line = f"1 x {name} ({mem:.0f} GiB)"
        if gpu_memory_fraction:
            line += f", capped at {mem * gpu_memory_fraction:.0f} GiB per trial (memory fraction {gpu_memory_fraction})"
        return line
    ram = psutil.virtual_memory().total / 2**30
    line = f"CPU only: {cpu_name()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM"
    if memory_cap_bytes:
        line += f"; each trial is capped at {memory_cap_bytes / 2**30:.1f} GiB of memory (exceeding it is an OOM)"
    return line
