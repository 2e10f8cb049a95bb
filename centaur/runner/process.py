"""Run a script as a subprocess in its own process group, with a timeout and a memory cap applied
from outside the script."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Variables a training script legitimately needs; everything else goes when the environment is scrubbed.
_KEEP_ENV = re.compile(
    r"^(PATH|HOME|USER|LOGNAME|LANG|LC_\w+|TZ|TMPDIR|TERM|PYTHONPATH|PYTHONHASHSEED|VIRTUAL_ENV|"
    r"CUDA_\w+|NVIDIA_\w+|LD_LIBRARY_PATH|OMP_NUM_THREADS|MKL_NUM_THREADS|HF_HOME|XDG_CACHE_HOME|CENTAUR_\w+)$"
)
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


@dataclass
class ProcessResult:
    returncode: int | None
    timed_out: bool
    wall_s: float
    log_path: Path
    output: str  # the log's tail, enough for classification and metrics


def scrubbed_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if _KEEP_ENV.match(k) and not _SECRET_ENV.search(k)}


def _limits(memory_cap_bytes: int | None):
    def apply() -> None:
        if sys.platform.startswith("linux"):
            # A worker killed by SIGKILL must not leave its training run holding the GPU: the trial
            # is closed as lost and retried elsewhere, so the orphan would only waste the device.
            try:
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            except OSError:
                pass
        if memory_cap_bytes:
            # RLIMIT_DATA covers heap and anonymous mmaps (what allocators use) but not the large
            # virtual reservations that runtimes make, so it caps real use without breaking imports.
            resource.setrlimit(resource.RLIMIT_DATA, (memory_cap_bytes, memory_cap_bytes))

    return apply


def run_script(
    script: Path,
    *,
    cwd: Path,
    log_path: Path,
    timeout_s: float | None,
    memory_cap_bytes: int | None = None,
    gpu_memory_fraction: float | None = None,
    scrub_env: bool = False,
    extra_env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    tail_bytes: int = 256 * 1024,
) -> ProcessResult:
    """Run `script` through the launcher; stdout and stderr go to `log_path`."""
    env = dict(os.environ)
    if scrub_env:
        env = scrubbed_environment(env)
    env["PYTHONUNBUFFERED"] = "1"
    extra = dict(extra_env or {})
    # The launcher must import from any cwd; the caller's paths (sibling modules) come after it.
    paths = [str(Path(__file__).resolve().parents[2]), extra.pop("PYTHONPATH", ""), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if gpu_memory_fraction is not None:
        env["CENTAUR_CUDA_MEM_FRACTION"] = str(gpu_memory_fraction)
    env.update(extra)
    returncode, timed_out, wall = spawn_and_wait(
        [python, "-m", "centaur.runner.launch", str(script)],
        cwd=cwd, env=env, log_path=log_path, timeout_s=timeout_s, preexec_fn=_limits(memory_cap_bytes),
    )
    return ProcessResult(returncode, timed_out, wall, log_path, read_tail(log_path, tail_bytes))


def spawn_and_wait(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float | None,
    preexec_fn: Callable[[], None],
    stdin_data: bytes | None = None,
) -> tuple[int | None, bool, float]:
    """Run `argv` in its own process group with stdout and stderr to `log_path`, optionally writing
    `stdin_data` to it; kill the whole group on timeout or when the caller is interrupted.
    Returns (return code, timed out, wall seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        if stdin_data is not None and proc.stdin is not None:
            try:
                proc.stdin.write(stdin_data)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at start-up; the log says why
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        except BaseException:
            kill_group(proc)  # the tuner is being stopped: never leave an orphaned training run
            raise
    return proc.returncode, timed_out, time.monotonic() - start


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_tail(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read().decode("utf-8", errors="replace")
