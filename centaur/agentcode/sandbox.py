"""Run an edited script in isolation: its own directory, a scrubbed environment, resource limits, no
network where the system allows a new network namespace, and the task's own files checked afterwards."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import resource
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from centaur.agentcode.harness import TAG
from centaur.runner.process import ProcessResult, read_tail, scrubbed_environment, spawn_and_wait

log = logging.getLogger(__name__)
FILE_SIZE_CAP = 2 * 2**30  # a runaway script may not fill the disk
_PROTECTED_SUFFIXES = (".py", ".toml", ".json", ".txt", ".cfg", ".yaml", ".yml")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@functools.cache
def network_isolation() -> tuple[list[str], str | None]:
    """The command prefix that puts a process in a new, empty network namespace, and a warning when
    there is none (no `unshare`, or user namespaces are not permitted here)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return [], "`unshare` is not installed: edited scripts run with network access"
    # As root a plain network namespace suffices; otherwise map the user into a new user namespace.
    prefix = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--map-root-user", "--net"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [], f"`unshare --net` failed ({e}): edited scripts run with network access"
    if probe.returncode != 0:
        why = probe.stderr.decode(errors="replace").strip()[:200]
        return [], f"`unshare --net` is not permitted here ({why}): edited scripts run with network access"
    return prefix, None


@dataclass
class SandboxResult(ProcessResult):
    network_isolated: bool = False
    tampered_files: tuple[str, ...] = ()
    token: str | None = None


def _limits(memory_cap_bytes: int | None):
    def apply() -> None:
        if memory_cap_bytes:  # soft = hard: the script cannot raise it again
            resource.setrlimit(resource.RLIMIT_DATA, (memory_cap_bytes, memory_cap_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_CAP, FILE_SIZE_CAP))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def snapshot(directory: Path) -> dict[Path, bytes]:
    """The task's own files (sources, configs), to detect and undo writes by an edited script."""
    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in _PROTECTED_SUFFIXES and path.stat().st_size < 8 * 2**20:
            files[path] = path.read_bytes()
    return files


def restore(files: Mapping[Path, bytes], directory: Path) -> list[str]:
    """Put changed or deleted files back, remove added ones; returns the names that differed."""
    changed = []
    for path, data in files.items():
        if not path.is_file() or hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest():
            changed.append(path.name)
            path.write_bytes(data)
    for path in directory.iterdir():
        if path.is_file() and path.suffix in _PROTECTED_SUFFIXES and path not in files:
            changed.append(path.name)
            path.unlink()
    return changed


def run_isolated(
    script: Path,
    *,
    task_dir: Path,
    log_path: Path,
    timeout_s: float | None,
    memory_cap_bytes: int | None = None,
    gpu_memory_fraction: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    isolate_network: bool = True,
    metric_keys: Sequence[str] = (),
    python: str = sys.executable,
    tail_bytes: int = 256 * 1024,
) -> SandboxResult:
    """Run `script` (a copy in its own trial directory, which is also its working directory) through
    the trial launcher, with the task directory importable (for its data/eval module) but checked.

    With `metric_keys`, the script runs under the metric harness: the lines its original metric
    statements print are repeated with a one-time token (`SandboxResult.token`), see harness.py."""
    env = scrubbed_environment(os.environ)  # always scrubbed: the script's author is a model
    env.update({k: v for k, v in (extra_env or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, str(task_dir)])
    if gpu_memory_fraction is not None:
        env["CENTAUR_CUDA_MEM_FRACTION"] = str(gpu_memory_fraction)
    prefix: list[str] = []
    if isolate_network:
        prefix, warning = network_isolation()
        if warning:
            log.warning(warning)
    token = secrets.token_hex(16) if metric_keys else None
    if metric_keys:
        env["CENTAUR_METRIC_KEYS"] = json.dumps(list(metric_keys))
    launcher = "centaur.agentcode.harness" if metric_keys else "centaur.runner.launch"
    before = snapshot(task_dir)
    trial_files = {p.name for p in script.parent.iterdir()}
    returncode, timed_out, wall = spawn_and_wait(
        [*prefix, python, "-m", launcher, str(script)],
        cwd=script.parent, env=env, log_path=log_path, timeout_s=timeout_s,
        preexec_fn=_limits(memory_cap_bytes), stdin_data=f"{token}\n".encode() if token else None,
    )
    tampered = restore(before, task_dir)
    # A module dropped beside the script would shadow the task's own (sys.path[0] is the script's directory).
    tampered += [
        p.name for p in script.parent.iterdir() if p.suffix == ".py" and p.name not in trial_files
    ]
    return SandboxResult(
        returncode,
        timed_out,
        wall,
        log_path,
        read_tail(log_path, tail_bytes),
        network_isolated=bool(prefix),
        tampered_files=tuple(tampered),
        token=token,
    )


def reported_lines(output: str, token: str) -> str:
    """The metric lines the harness tagged with `token`, untagged; nothing else in the output counts."""
    prefix = f"{TAG} {token} "
    return "\n".join(line[len(prefix):] for line in output.replace("\r", "\n").splitlines()
                     if line.startswith(prefix))
