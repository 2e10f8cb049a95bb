"""Run an edited script in the sandbox (bwrap.py): the script read-only, one writable output folder, a
scrubbed environment, resource limits, a watchdog on the number and memory of its processes, a time
limit set from outside, and the metric lines of the protected statements read from the whole stream.

Without a sandbox (`unsafe`), the old protections only: a network namespace where `unshare` works, the
task's files hashed and restored, rlimits; the script can read whatever the user can."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from centaur.agentcode.bwrap import PACKAGE_ROOT, View, build_argv
from centaur.agentcode.evaluator import MODEL_FILE
from centaur.agentcode.harness import EXEC_MARK, TAG
from centaur.runner.process import ProcessResult, read_tail, scrubbed_environment, spawn_and_wait

log = logging.getLogger(__name__)
FILE_SIZE_CAP = 2 * 2**30  # a runaway script may not fill the disk
MAX_PROCESSES = 256  # processes and threads of one sandboxed run (RLIMIT_NPROC where it applies, and the watchdog)
_PROTECTED_SUFFIXES = (".py", ".toml", ".json", ".txt", ".cfg", ".yaml", ".yml")
_PACKAGE_ROOT = str(PACKAGE_ROOT)
_WATCH_S = 0.1
SANDBOX_DIR = "/trial"  # where the script and its output folder appear inside the sandbox


@functools.cache
def network_isolation() -> tuple[list[str], str | None]:
    """The command prefix that puts a process in a new, empty network namespace, and a warning when
    there is none (no `unshare`, or user namespaces are not permitted here). Used by unsafe runs only."""
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
    sandboxed: bool = False
    tampered_files: tuple[str, ...] = ()
    token: str | None = None
    reported: dict[str, float] | None = None  # the protected statements' metric lines (tagged with the token)
    limit: str | None = None  # why the watchdog ended the run
    exec_s: float | None = None  # seconds from the launch to the start of the edited code (the harness's mark)


def _limits(memory_cap_bytes: int | None, max_processes: int | None, no_queues: bool = False):
    def apply() -> None:
        if no_queues:  # POSIX message queues outlive their processes: none for the model process
            resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
        if memory_cap_bytes:  # soft = hard: the script cannot raise it again
            resource.setrlimit(resource.RLIMIT_DATA, (memory_cap_bytes, memory_cap_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_CAP, FILE_SIZE_CAP))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if max_processes:  # counted per user namespace (Linux >= 5.14); not enforced for real root
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))

    return apply


class _Watchdog:
    """Kills the run (its whole PID namespace, by killing bwrap's group) when its processes and threads
    exceed `max_processes` or their resident memory exceeds `max_rss` bytes together."""

    def __init__(self, max_processes: int | None, max_rss: int | None) -> None:
        self.max_processes, self.max_rss = max_processes, max_rss
        self.reason: str | None = None
        self.pid: int | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="centaur-sandbox-watchdog", daemon=True)

    def start(self, pid: int) -> None:
        self.pid = pid
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        assert self.pid is not None
        while not self.done.wait(_WATCH_S):
            try:
                procs = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                return
            n_threads, rss = 0, 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    n_threads += p.num_threads()
                    rss += p.memory_info().rss
            why = None
            if self.max_processes and n_threads > self.max_processes:
                why = f"{len(procs)} processes with {n_threads} threads (limit {self.max_processes})"
            elif self.max_rss and rss > self.max_rss:
                why = f"{rss / 2**20:.0f} MiB resident together (limit {self.max_rss / 2**20:.0f} MiB)"
            if why:
                self.reason = why
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                return


class _TagScanner:
    """Reads the whole output stream for the lines the harness tagged with this run's token."""

    def __init__(self, token: str) -> None:
        self.prefix = f"{TAG} {token} ".encode()
        self.partial = b""
        self.lines: list[str] = []
        self.exec_at: float | None = None

    def feed(self, data: bytes) -> None:
        data = self.partial + data.replace(b"\r", b"\n")
        *complete, self.partial = data.split(b"\n")
        if len(self.partial) > 1 << 16:
            self.partial = b""
        for line in complete:
            if line.startswith(self.prefix):
                text = line[len(self.prefix):].decode(errors="replace")
                if text.strip() == EXEC_MARK:
                    self.exec_at = self.exec_at or time.monotonic()
                    continue
                self.lines.append(text)
                del self.lines[:-64]

    def text(self) -> str:
        return "\n".join(self.lines)


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


def shadows(out_dir: Path, modules: Sequence[str]) -> list[str]:
    """Files in the writable folder that could shadow a module: any `.py`, and packages or extension
    modules named like the task's own modules."""
    found = []
    if not out_dir.is_dir():
        return found
    for path in out_dir.rglob("*"):
        stem = path.name.split(".")[0]
        if path.is_symlink() or (path.is_file() and path.suffix in (".py", ".pth", ".so", ".pyc")) or (
            path.is_dir() and stem in modules
        ):
            found.append(str(path.relative_to(out_dir)))
    return found


def run_isolated(
    script: Path,
    *,
    task_dir: Path,
    log_path: Path,
    timeout_s: float | None,
    out_dir: Path | None = None,
    memory_cap_bytes: int | None = None,
    gpu_memory_fraction: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    isolate_network: bool = True,
    metric_keys: Sequence[str] = (),
    modules: Sequence[str] = (),
    sandbox: bool = True,
    read_only: Sequence[Path] = (),
    hidden: Sequence[Path] = (),
    max_processes: int | None = MAX_PROCESSES,
    python: str = sys.executable,
    tail_bytes: int = 256 * 1024,
    handover: str | None = None,
    mapped: Sequence[tuple[Path, str]] = (),
) -> SandboxResult:
    """Run `script` (a copy in its own trial directory) with `out_dir` (default: a folder `out` beside
    it) as its working directory and only writable place, the task directory importable read-only.

    With `metric_keys`, the script runs under the metric harness: the lines its original metric
    statements print are repeated with a one-time token and read from the whole stream
    (`SandboxResult.reported`), see harness.py. With `sandbox` False (the user's explicit choice) it
    runs outside bubblewrap with the older, weaker protections. With `handover` (a function name), the
    harness replaces that protected function by a stub that saves the model it gets to
    `out_dir/evaluator.MODEL_FILE` and ends the run (the out-of-process evaluation, evaluator.py).
    `mapped` folders appear read-only at the given sandbox paths (the data view at a neutral path)."""
    out_dir = out_dir or script.parent / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = scrubbed_environment(os.environ)  # always scrubbed: the script's author is a model
    env.update({k: v for k, v in (extra_env or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONSAFEPATH"] = "1"  # the working directory is never on sys.path
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, str(task_dir)])
    if gpu_memory_fraction is not None:
        env["CENTAUR_CUDA_MEM_FRACTION"] = str(gpu_memory_fraction)
    token = secrets.token_hex(16) if metric_keys else None
    if metric_keys:
        env["CENTAUR_METRIC_KEYS"] = json.dumps(list(metric_keys))
    env["CENTAUR_TASK_MODULES"] = json.dumps(list(modules))
    launcher = "centaur.agentcode.harness" if metric_keys or handover else "centaur.runner.launch"
    command = [python, "-m", launcher, str(script)]
    network_isolated = False
    if sandbox:
        # The script and its output folder appear at neutral paths (SANDBOX_DIR): nothing of the run
        # directory's path exists inside; HOME is the output folder.
        inner_script, inner_out = f"{SANDBOX_DIR}/{script.name}", f"{SANDBOX_DIR}/out"
        command = [python, "-m", launcher, inner_script]
        env.update({"HOME": inner_out, "TMPDIR": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache",
                    "TORCHINDUCTOR_CACHE_DIR": "/tmp/.inductor", "TRITON_CACHE_DIR": "/tmp/.triton",
                    "MPLCONFIGDIR": "/tmp/.mpl"})
        env.pop("TMP", None)
        env.pop("TEMP", None)
        if handover:
            env["CENTAUR_HANDOVER"] = json.dumps({"function": handover, "path": f"{inner_out}/{MODEL_FILE}"})
        view = View(read_only=[task_dir, *read_only], hidden=list(hidden), chdir=inner_out,
                    mapped=[(script, inner_script, False), (out_dir, inner_out, True),
                            *((src, dest, False) for src, dest in mapped)])
        command = build_argv(command, view, env=env)
        network_isolated = True
    else:
        if isolate_network:
            prefix, warning = network_isolation()
            if warning:
                log.warning(warning)
            command = [*prefix, *command]
            network_isolated = bool(prefix)
        if handover:  # with or without the network namespace (it was set only without one)
            env["CENTAUR_HANDOVER"] = json.dumps({"function": handover,
                                                  "path": str(out_dir.resolve() / MODEL_FILE)})
    before = snapshot(task_dir)
    scanner = _TagScanner(token) if token else None
    watchdog = _Watchdog(max_processes, memory_cap_bytes * 4 if memory_cap_bytes else None) if sandbox else None
    launched = time.monotonic()
    try:
        returncode, timed_out, wall = spawn_and_wait(
            command, cwd=out_dir, env=env, log_path=log_path, timeout_s=timeout_s,
            preexec_fn=_limits(memory_cap_bytes, max_processes if sandbox else None),
            stdin_data=f"{token}\n".encode() if token else None,
            on_output=scanner.feed if scanner else None, on_start=watchdog.start if watchdog else None,
        )
    finally:
        if watchdog:
            watchdog.stop()
    tampered = restore(before, task_dir)
    # A module dropped where an import could find it would shadow the task's own.
    tampered += [f"{out_dir.name}/{name}" for name in shadows(out_dir, modules)]
    tampered += [p.name for p in script.parent.iterdir() if p.suffix == ".py" and p != script]
    reported = None
    if scanner is not None:
        from centaur.runner.outcome import parse_metrics

        reported = parse_metrics(scanner.text())
    return SandboxResult(
        returncode,
        timed_out,
        wall,
        log_path,
        read_tail(log_path, tail_bytes),
        network_isolated=network_isolated,
        sandboxed=sandbox,
        tampered_files=tuple(tampered),
        token=token,
        reported=reported,
        limit=watchdog.reason if watchdog else None,
        exec_s=scanner.exec_at - launched if scanner is not None and scanner.exec_at is not None else None,
    )


def model_process(
    script: Path,
    model: Path,
    *,
    task_dir: Path,
    batch_timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
    modules: Sequence[str] = (),
    sandbox: bool = True,
    hidden: Sequence[Path] = (),
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of the model process (scorer.py) for the edited `script` and the
    model it handed over: in its own sealed sandbox, as its PID 1, with the script and the model
    read-only, the task's folder and nothing else of the user's (no data: no training split, no
    held-out split), and nothing writable. It answers forward passes on a pipe, one fresh child per batch."""
    env = scrubbed_environment(os.environ)
    env.update(dict(extra_env or {}))
    env.pop("CENTAUR_DATA_DIR", None)
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONSAFEPATH": "1",
                "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, str(task_dir)]),
                "CENTAUR_TASK_MODULES": ",".join(modules)})
    args = ["-m", "centaur.agentcode.scorer"]
    if not sandbox:
        return [python, *args, str(script), str(model), f"{batch_timeout_s:g}"], env
    inner_script, inner_model = f"{SANDBOX_DIR}/{script.name}", f"{SANDBOX_DIR}/{MODEL_FILE}"
    env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "MPLCONFIGDIR": "/tmp/.mpl",
                "TORCHINDUCTOR_CACHE_DIR": "/tmp/.inductor", "TRITON_CACHE_DIR": "/tmp/.triton"})
    for name in ("TMP", "TEMP"):
        env.pop(name, None)
    view = View(read_only=[task_dir], hidden=list(hidden), chdir="/", sealed=True, as_pid_1=True,
                mapped=[(script, inner_script, False), (model, inner_model, False)])
    command = [python, *args, inner_script, inner_model, f"{batch_timeout_s:g}"]
    return build_argv(command, view, env=env), env


def gpu_visible() -> bool:
    """Whether a GPU is passed into the sandboxes (the scorer's tolerances depend on it)."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*")) and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")


def limits(memory_cap_bytes: int | None, max_processes: int | None = MAX_PROCESSES, *, no_queues: bool = False):
    """The rlimits of a sandboxed process, as a preexec function."""
    return _limits(memory_cap_bytes, max_processes, no_queues)


def reported_lines(output: str, token: str) -> str:
    """The metric lines the harness tagged with `token`, untagged; nothing else in the output counts."""
    prefix = f"{TAG} {token} "
    return "\n".join(line[len(prefix):] for line in output.replace("\r", "\n").splitlines()
                     if line.startswith(prefix))


def wait_gone(pids: Sequence[int], timeout_s: float = 2.0) -> list[int]:
    """Of `pids`, those still alive after `timeout_s` (for the tests of the process cleanup)."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    return alive
