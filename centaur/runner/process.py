"""Run a script as a subprocess in its own process group, with a timeout and a memory cap applied
from outside the script; its output is capped, scanned for metric lines, and every process it started
is killed when it ends.

Output: stdout and stderr go through a pipe to a reader thread in this process, which writes
`log_path` (the first LOG_HEAD_BYTES and the last LOG_TAIL_BYTES of the stream, with a line saying how
many bytes were cut between them) and hands every chunk to an optional callback (the metric scanner of
`run_script`, which so sees the whole stream in bounded memory) and every line (`\n` or `\r` ends one) to
another (`on_line`: the progress reader of a pruned study). The child never blocks on the pipe; the
callbacks run on the reader thread, so they must be quick (hand work to another thread).
A `StopRequest` (`stop`) set from any thread stops the trial like a timeout (SIGTERM to its group,
SIGKILL after a grace period) within half a second; `stop.stopped` then says it was stopped for it.
While the trial runs the log can be followed; past the head it grows to at most head + 2 x tail bytes
and is compacted to head + note + tail (the file is rewritten behind the head: `tail -f` loses track).

Cleanup, when the trial's first process (the leader) has exited, timed out or the caller is interrupted:
- the leader's process group gets SIGKILL (children started with Popen, fork or multiprocessing);
- the process that calls `spawn_and_wait` is a child subreaper (Linux, PR_SET_CHILD_SUBREAPER) while
  a trial runs, so an orphan of the trial (a child whose parent exited, for instance one that left the
  group with setsid()) is re-parented to it rather than to init, and it can reap it;
- every trial process inherits CENTAUR_TRIAL_ID=<one-time token> in its environment, and the
  descendants of the leader are recorded twice a second while it runs; after the trial, every process
  of the trial's session or group, every process seen in the trial's tree, and every process whose
  environment carries the token (read from /proc/PID/environ, so wherever it was re-parented) gets
  SIGKILL, until none is left; those that are our children (zombies included) are reaped.

Limits: a process that leaves the trial's tree between two observations (double fork, setsid) AND
clears or replaces its environment (`env -i`, execve with a new environment) is not found; neither is
one running as another user, whose environment cannot be read. A zombie of such a process can stay
until this process exits. Outside Linux there is no subreaper and no /proc environment: only the
process group and the processes seen in the tree are killed. A tuner killed by SIGKILL cleans up
nothing: the leader dies with it (PR_SET_PDEATHSIG), its escaped descendants do not.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import logging
import os
import re
import resource
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psutil

from centaur.runner.outcome import MetricScanner
from centaur.runner.progress import LineSplitter, StopRequest

log = logging.getLogger(__name__)

LOG_HEAD_BYTES = 1 * 2**20  # trial.log keeps the first MiB of the output ...
LOG_TAIL_BYTES = 4 * 2**20  # ... and its last 4 MiB, with a line saying how much was cut between them
TRIAL_ID_ENV = "CENTAUR_TRIAL_ID"  # the token every process of a trial inherits, to find it after the trial
_POLL_S = 0.5  # how often the trial's process tree is recorded while it runs
_SWEEP_S = 10.0  # how long the cleanup keeps killing before it gives up (a process stuck in the kernel)
_DRAIN_S = 2.0  # how long the reader keeps reading after the cleanup, for a writer it could not kill
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 1, 36, 37

# Variables a training script legitimately needs; everything else goes when the environment is scrubbed.
_KEEP_ENV = re.compile(
    r"^(PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|LC_\w+|TZ|TMPDIR|TEMP|TMP|TERM|PYTHONPATH|PYTHONHASHSEED|"
    r"VIRTUAL_ENV|CONDA_PREFIX|CONDA_DEFAULT_ENV|CC|CXX|LD_LIBRARY_PATH|"
    r"SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|"
    r"CUDA_\w+|NVIDIA_\w+|OMP_\w+|MKL_\w+|KMP_\w+|OPENBLAS_NUM_THREADS|NUMEXPR_NUM_THREADS|"
    r"PYTORCH_\w+|TORCH_\w+|TORCHINDUCTOR_\w+|TRITON_\w+|NCCL_\w+|HF_\w+|TRANSFORMERS_\w+|"
    r"XDG_CACHE_HOME|XDG_RUNTIME_DIR|"
    # the bundled task's overrides (centaur/tasks/gpt/README.md) and what the launcher and harness read
    r"CENTAUR_(DATA_DIR|GPT_\w+|THREADS|SEED|COMPILE|CUDA_MEM_FRACTION|METRIC_KEYS))$"
)
# Never passed to a trial, scrubbed or not, even when named in [runner] env_passthrough.
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|^CENTAUR_LLM_", re.IGNORECASE)


@dataclass
class ProcessResult:
    returncode: int | None
    timed_out: bool
    wall_s: float
    log_path: Path
    output: str  # the log's tail, enough for classification
    metrics: dict[str, float] | None = None  # the metric lines of the whole output (last value per key)
    stopped: bool = False  # killed because `stop` was requested (a pruned trial), not ended on its own


def is_secret(name: str) -> bool:
    """A variable that never reaches a trial: LLM settings of the tuner, keys, tokens, passwords."""
    return bool(_SECRET_ENV.search(name))


def scrubbed_environment(env: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The allowlisted variables of `env`, plus those named by `passthrough` (names or glob patterns),
    minus the secrets (`is_secret`), which no pattern brings back."""
    patterns = list(passthrough)
    return {
        k: v for k, v in env.items()
        if (_KEEP_ENV.match(k) or any(fnmatch.fnmatchcase(k, p) for p in patterns)) and not is_secret(k)
    }


def trial_environment(
    env: Mapping[str, str], *, scrub: bool = True, passthrough: Iterable[str] = ()
) -> dict[str, str]:
    """What a trial inherits from `env`: the scrubbed environment, or with `scrub` False all of it
    except the secrets."""
    if scrub:
        return scrubbed_environment(env, passthrough)
    return {k: v for k, v in env.items() if not is_secret(k)}


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here, not in a forked child (where loading could deadlock)


def _prctl(option: int, value: int) -> int:
    """prctl(2) on Linux; -1 elsewhere or when it fails."""
    if _PRCTL is None:
        return -1
    return int(_PRCTL(option, ctypes.c_ulong(value), 0, 0, 0))


def _limits(memory_cap_bytes: int | None):
    def apply() -> None:
        # A worker killed by SIGKILL must not leave its training run holding the GPU: the trial
        # is closed as lost and retried elsewhere, so the orphan would only waste the device.
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
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
    scrub_env: bool = True,
    env_passthrough: Iterable[str] = (),
    extra_env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    tail_bytes: int = 256 * 1024,
    on_line: Callable[[str], None] | None = None,
    stop: StopRequest | None = None,
    command: list[str] | None = None,
    args: Sequence[str] = (),
    verify_spec: Path | None = None,
) -> ProcessResult:
    """Run `script` through the launcher, with `args` as its command-line arguments and, with
    `verify_spec`, recording the values it used (centaur.runner.observe); stdout and stderr go to
    `log_path` (capped, see the module).
    `command` (the argv of a `[runner] command`, placeholders filled) is run instead of the launcher, with
    the same working directory, environment, memory cap, process group and cleanup; the GPU memory
    fraction is then only in CENTAUR_CUDA_MEM_FRACTION (the launcher applies it, a command does not).

    The trial inherits `trial_environment(os.environ, scrub=scrub_env, passthrough=env_passthrough)`;
    `extra_env` is set over it as given. `ProcessResult.metrics` holds the `key: number` lines of the
    whole output, `output` the last `tail_bytes` of the log. `on_line` gets every output line as it
    comes (on the reader thread); `stop`, when requested, kills the trial (`ProcessResult.stopped`)."""
    env = trial_environment(os.environ, scrub=scrub_env, passthrough=env_passthrough)
    env["PYTHONUNBUFFERED"] = "1"
    extra = dict(extra_env or {})
    # The launcher must import from any cwd; the caller's paths (sibling modules) come after it.
    paths = [str(Path(__file__).resolve().parents[2]), extra.pop("PYTHONPATH", ""), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if gpu_memory_fraction is not None:
        env["CENTAUR_CUDA_MEM_FRACTION"] = str(gpu_memory_fraction)
    env.update(extra)
    scanner = MetricScanner()
    launcher = [python, "-m", "centaur.runner.launch", *(["--verify", str(verify_spec)] if verify_spec else [])]
    returncode, timed_out, wall = spawn_and_wait(
        list(command) if command else [*launcher, str(script), *args],
        cwd=cwd, env=env, log_path=log_path, timeout_s=timeout_s, preexec_fn=_limits(memory_cap_bytes),
        on_output=scanner.feed, on_line=on_line, stop=stop,
    )
    return ProcessResult(returncode, timed_out, wall, log_path, read_tail(log_path, tail_bytes), scanner.result(),
                         stopped=stop is not None and stop.stopped)


def spawn_and_wait(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float | None,
    preexec_fn: Callable[[], None],
    stdin_data: bytes | None = None,
    on_output: Callable[[bytes], None] | None = None,
    log_head_bytes: int = LOG_HEAD_BYTES,
    log_tail_bytes: int = LOG_TAIL_BYTES,
    on_start: Callable[[int], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    stop: StopRequest | None = None,
) -> tuple[int | None, bool, float]:
    """Run `argv` in its own process group with stdout and stderr to `log_path` (its head and tail),
    optionally writing `stdin_data` to it and handing each chunk of output to `on_output`; kill the
    whole group on timeout or when the caller is interrupted, and every process of the trial when it
    ends (see the module). `on_start` is called with the leader's pid once it runs (a watchdog may
    kill its group). `on_line` gets each line of output (on the reader thread); a requested `stop` kills
    the group as a timeout does and sets `stop.stopped`. Returns (return code, timed out, wall seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    env = {**env, TRIAL_ID_ENV: token}
    start = time.monotonic()
    timed_out = False
    # Unbuffered: a full disk fails the write the pump makes (and it reads on), never a flush at close,
    # which would turn a trial that ran to its end into an error.
    with _subreaper(), open(log_path, "w+b", buffering=0) as log_file:
        before = _child_pids()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        assert proc.stdout is not None
        pump = _Pump(proc.stdout, _CappedLog(log_file, log_head_bytes, log_tail_bytes), on_output, on_line)
        trial = _TrialProcesses(proc.pid, token, before)
        try:
            if on_start is not None:
                on_start(proc.pid)
            if stdin_data is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(stdin_data)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # it died at start-up; the log says why
            ended = _wait(proc, timeout_s, trial, stop)
            timed_out = ended == "timeout"
            if ended == "stop":
                assert stop is not None
                stop.stopped = True
            if ended != "exit":
                kill_group(proc)
        except BaseException:
            kill_group(proc)  # the tuner is being stopped: never leave an orphaned training run
            raise
        finally:
            trial.kill_all()
            pump.finish()
    return proc.returncode, timed_out, time.monotonic() - start


def _wait(proc: subprocess.Popen, timeout_s: float | None, trial: _TrialProcesses, stop: StopRequest | None) -> str:
    """Wait for the leader, recording the trial's process tree meanwhile; "exit" when it ended on its own,
    "timeout" or "stop" (requested) when it must be killed."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if stop is not None and stop.requested and proc.poll() is None:
            return "stop"
        step = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if step <= 0:
            return "timeout"
        try:
            proc.wait(timeout=step)
            return "exit"
        except subprocess.TimeoutExpired:
            trial.observe()


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


# -- the trial's processes -----------------------------------------------------------------------
_subreaper_lock = threading.Lock()
_subreaper_users = 0
_subreaper_was_set = False


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """This process is a child subreaper while at least one trial runs in it (threads share it)."""
    global _subreaper_users, _subreaper_was_set
    with _subreaper_lock:
        if _subreaper_users == 0:
            _subreaper_was_set = _is_subreaper()
            if not _subreaper_was_set:
                _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _subreaper_users += 1
    try:
        yield
    finally:
        with _subreaper_lock:
            _subreaper_users -= 1
            if _subreaper_users == 0 and not _subreaper_was_set:
                _prctl(_PR_SET_CHILD_SUBREAPER, 0)


def _is_subreaper() -> bool:
    flag = ctypes.c_int(0)
    return _PRCTL is not None and _PRCTL(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0


def _child_pids() -> set[int]:
    try:
        return {c.pid for c in psutil.Process().children()}
    except psutil.Error:
        return set()


class _TrialProcesses:
    """Finds and kills the processes of one trial (see the module docstring for how and its limits)."""

    def __init__(self, leader: int, token: str, children_before: set[int]) -> None:
        self.leader = leader
        self.token = token
        self.before = children_before  # our children from before the trial: never the trial's
        self.seen: dict[int, float] = {}  # pid -> create time of the processes seen in the trial's tree

    def observe(self) -> None:
        try:
            for p in psutil.Process(self.leader).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass

    def _belongs(self, p: psutil.Process, me: int) -> bool:
        try:
            if p.pid in self.seen and self.seen[p.pid] == p.create_time():
                return True
            if p.pid in self.before and p.ppid() == me:
                return False
            if self.leader in (os.getsid(p.pid), os.getpgid(p.pid)):
                return True
            return p.environ().get(TRIAL_ID_ENV) == self.token
        except (psutil.Error, OSError):
            return False

    def members(self) -> list[psutil.Process]:
        me = os.getpid()
        found = []
        for p in psutil.process_iter():
            if p.pid != me and p.pid != self.leader and self._belongs(p, me):
                found.append(p)
        return found

    def kill_all(self) -> None:
        """SIGKILL the trial's group and every process that belongs to the trial, reaping those that
        are our children, until none is left alive (or _SWEEP_S passed)."""
        me = os.getpid()
        deadline = time.monotonic() + _SWEEP_S
        while True:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.leader, signal.SIGKILL)
            alive = []
            for p in self.members():
                try:
                    self.seen.setdefault(p.pid, p.create_time())
                    if p.status() == psutil.STATUS_ZOMBIE:
                        if p.ppid() == me:  # an orphan re-parented to us: reap it
                            with contextlib.suppress(ChildProcessError):
                                os.waitpid(p.pid, os.WNOHANG)
                        continue  # another's zombie: its parent is killed too, then it is ours
                    with contextlib.suppress(OSError):
                        if os.getpgid(p.pid) == p.pid != os.getpgid(0):
                            os.killpg(p.pid, signal.SIGKILL)  # it leads a group of its own
                    p.send_signal(signal.SIGKILL)
                    alive.append(p.pid)
                except (psutil.Error, OSError):
                    continue
            if not alive:
                return
            if time.monotonic() > deadline:
                log.warning("processes of a trial are still alive after SIGKILL: pids %s", alive)
                return
            time.sleep(0.02)


# -- the output --------------------------------------------------------------------------------------
class _CappedLog:
    """Writes a stream to a file as its head, a note of how many bytes were cut, and its tail."""

    def __init__(self, f: BinaryIO, head_bytes: int, tail_bytes: int) -> None:
        self.f = f
        self.head = max(0, head_bytes)
        self.tail = max(0, tail_bytes)
        self.head_left = self.head
        self.head_ends_line = True
        self.body_start: int | None = None  # where the bytes after the head (and the note) start
        self.body = 0  # how many there are in the file
        self.cut = 0

    def write(self, data: bytes) -> None:
        if self.head_left:
            part = data[: self.head_left]
            self.f.write(part)
            self.head_left -= len(part)
            self.head_ends_line = part.endswith(b"\n")
            data = data[len(part):]
        if data:
            if self.body_start is None:
                self.body_start = self.head
            self.f.write(data)  # the file's position is always its end
            self.body += len(data)
            if self.body > 2 * self.tail:
                self._compact()
        self.f.flush()  # the log can be followed while the trial runs

    def close(self) -> None:
        if self.body_start is not None and self.body > self.tail:
            self._compact()
        self.f.flush()

    def _compact(self) -> None:
        assert self.body_start is not None
        keep = min(self.tail, self.body)
        self.f.seek(self.body_start + self.body - keep)
        kept = self.f.read(keep)
        newline = kept.find(b"\n", 0, 64 * 1024)
        if 0 <= newline < len(kept) - 1:
            kept = kept[newline + 1:]  # the tail starts at a line
        self.cut += self.body - len(kept)
        note = (
            ("" if self.head_ends_line else "\n")
            + f"[centaur: {self.cut} bytes cut from the middle of this log; kept the first {self.head} "
            f"and the last {len(kept)} bytes]\n"
        ).encode()
        self.f.seek(self.head)
        self.f.write(note)
        self.body_start = self.head + len(note)
        self.f.write(kept)
        self.f.truncate()
        self.body = len(kept)


class _Pump:
    """A thread that reads the child's output as it comes (so it never blocks on a full pipe), writes
    it to the log and hands it to the callbacks (chunks, lines)."""

    def __init__(self, stream: BinaryIO, sink: _CappedLog, on_output: Callable[[bytes], None] | None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.stream = stream
        self.fd = stream.fileno()
        self.sink: _CappedLog | None = sink
        self.on_output = on_output
        self.lines = LineSplitter(on_line) if on_line is not None else None
        self.stop_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="centaur-trial-output", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
            except (OSError, ValueError):
                return
            stop_at = self.stop_at
            if not ready:
                if stop_at is not None:
                    return
                continue
            if stop_at is not None and time.monotonic() > stop_at + _DRAIN_S:
                return  # a writer that is still alive: it was not found, stop reading it
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            if self.sink is not None:
                try:
                    self.sink.write(data)
                except OSError as e:  # the disk is full: keep reading, the child must not block
                    log.warning("cannot write the trial's log: %s", e)
                    self.sink = None
            if self.on_output is not None:
                try:
                    self.on_output(data)
                except Exception:
                    log.exception("scanning the trial's output failed")
                    self.on_output = None
            if self.lines is not None:
                try:
                    self.lines.feed(data)
                except Exception:
                    log.exception("reading the trial's progress lines failed")
                    self.lines = None

    def finish(self) -> None:
        """Read what is left (the writers are dead: up to the end of the stream), then close."""
        self.stop_at = time.monotonic()
        self.thread.join()
        if self.lines is not None:
            with contextlib.suppress(Exception):
                self.lines.close()
        with contextlib.suppress(OSError):
            self.stream.close()
        if self.sink is not None:
            try:
                self.sink.close()
            except OSError as e:
                log.warning("cannot write the trial's log: %s", e)
