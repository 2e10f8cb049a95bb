"""The model process of the out-of-process evaluation (evaluator.py): one fresh child per batch.

Usage (by the tuner, inside a sealed sandbox in which it is PID 1):
python -m centaur.agentcode.scorer SCRIPT MODEL BATCH_TIMEOUT_S

This process (the zygote) never runs code of the edit. It makes itself non-dumpable (no other process
may read its memory or its descriptors through /proc, or ptrace it), imports torch and numpy, and tells
the tuner it is ready. For each batch it reads the tokens into one buffer, forks, and wipes the buffer;
the child closes the tuner's pipes, loads the edited module and the model (the edit's code runs here
first, under the batch's time limit), runs the forward, writes the logits to a pipe of its own and
exits. The zygote relays exactly the expected number of bytes, then ends every other process of the
sandbox and checks that no System V IPC object or key was left: a child can keep nothing for the next
one (the file system is read-only, POSIX message queues are limited to 0 bytes). It never passes on a
message of the child's; the child's traceback goes to standard error (the trial's evaluation.log).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import struct
import sys
import time
import traceback
import types
from pathlib import Path

import numpy as np

VOCAB_SIZE = 256
ERROR_BIT = 1 << 63
_PR_SET_DUMPABLE = 4


def load_edited_module(script: Path) -> types.ModuleType:
    """Execute the edited script as a module without running main(), registered as `__main__` (the name
    its classes had when the training run pickled the model)."""
    module = types.ModuleType("__centaur_model__")
    module.__file__ = str(script)
    sys.path.insert(0, str(Path(script).parent))
    code = compile(Path(script).read_text(encoding="utf-8"), str(script), "exec")
    exec(code, module.__dict__)  # noqa: S102 - a forked child of a sealed sandbox
    sys.modules["__main__"] = module
    return module


def load_model(script: Path, path: Path, device: str = "cpu"):
    """The handed-over model (a pickled torch.nn.Module: unpickling runs the edit's code, which is why
    this happens only in a child, under the batch's time limit)."""
    import torch

    load_edited_module(script)
    model = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the handed-over object is a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    return model


def _child(script: Path, model_path: Path, tokens: bytearray, b: int, t: int, out_fd: int) -> None:
    """Answer one batch and exit; never returns."""
    code = 1
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(max(1, int(os.environ.get("CENTAUR_THREADS") or len(os.sched_getaffinity(0)))))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.from_numpy(np.frombuffer(bytes(tokens), dtype=np.uint8).reshape(b, t).astype(np.int64))
        model = load_model(script, model_path, device)
        captured: list = []
        original = F.cross_entropy

        def capture(input, target, *args, **kwargs):  # noqa: A002 - F.cross_entropy's own names
            captured.append(input.detach())
            return original(input, target, *args, **kwargs)

        F.cross_entropy = capture
        autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")
        x = x.to(device)
        with torch.no_grad(), autocast:
            model(x, torch.zeros_like(x), reduction="sum")
        if len(captured) != 1:
            raise RuntimeError(f"the model's forward called F.cross_entropy {len(captured)} times, not once")
        logits = captured[0].float().reshape(b, t, -1).cpu().numpy()
        data = np.ascontiguousarray(logits, dtype=np.float32).tobytes()
        _write_all(out_fd, struct.pack("<Q", len(data)) + data)
        code = 0
    except BaseException:  # noqa: BLE001 - whatever the edit raised: to the log, never to the tuner
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_into(stream, buf: bytearray) -> bool:
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = stream.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


def _collect(fd: int, pid: int, expected: int, deadline: float) -> tuple[bytearray | None, str | None]:
    """The child's answer (an 8-byte count, then exactly `expected` bytes) and its exit, by `deadline`;
    else None and why (a message of ours). Read straight into one buffer: no copy is left behind."""
    buf = bytearray(8 + expected)
    view, got = memoryview(buf), 0
    while got < len(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            return None, "timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        n = os.readv(fd, [view[got:]])
        if not n:
            break
        got += n
        if got >= 8 and struct.unpack("<Q", bytes(buf[:8]))[0] != expected:
            return None, "the forward answered logits of the wrong shape (the vocabulary must be 256)"
    while True:  # wait for the child's exit within the same deadline
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            return None, "timeout"
        time.sleep(0.002)
    if os.waitstatus_to_exitcode(status) != 0 or got != len(buf):
        return None, f"the forward failed (exit status {os.waitstatus_to_exitcode(status)}; see evaluation.log)"
    return buf, None


def _sweep() -> int:
    """Kill every process of the sandbox but this one (PID 1) and reap them; how many there were."""
    if os.getpid() != 1:
        return 0  # not in our own PID namespace (unsafe runs): the others are not ours to kill
    found = 0
    for _ in range(50):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != 1]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        found = max(found, len(pids))
        _reap(0.05)
    return found


def _reap(wait_s: float) -> None:
    end = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > end:
                return
            time.sleep(0.005)


def ipc_state() -> tuple[str, ...]:
    """System V IPC objects and keys visible here (namespaced by the sandbox)."""
    state = []
    for name in ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem"):
        with contextlib.suppress(OSError):
            state += [f"{name}:{line.split()[1]}" for line in Path(name).read_text().splitlines()[1:] if line.split()]
    with contextlib.suppress(OSError):
        state += [f"key:{line.split()[0]}" for line in Path("/proc/keys").read_text().splitlines() if line.split()]
    return tuple(sorted(state))


def _not_dumpable() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def serve(script: Path, model_path: Path, batch_timeout_s: float) -> None:
    _not_dumpable()
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    os.dup2(2, 1)  # whatever anything prints goes to the log, not into the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    import torch  # noqa: F401 - imported once here, so each child starts warm (CUDA stays uninitialised)

    for name in os.environ.get("CENTAUR_TASK_MODULES", "").split(","):  # the task's own (hashed) modules
        if name:
            with contextlib.suppress(Exception):
                __import__(name)
    clean = ipc_state()
    proto_out.write(struct.pack("<Q", 0))
    header = bytearray(8)
    while _read_into(proto_in, header):
        b, t = struct.unpack("<II", bytes(header))
        if b == 0:
            return
        tokens = bytearray(b * t)
        if not _read_into(proto_in, tokens):
            return
        r, w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            for stream in (proto_in, proto_out):
                with contextlib.suppress(OSError):
                    stream.close()
            _child(script, model_path, tokens, b, t, w)
        os.close(w)
        tokens[:] = bytes(len(tokens))  # the next child forks from this memory: no batch stays in it
        answer, why = _collect(r, pid, b * t * VOCAB_SIZE * 4, start + batch_timeout_s)
        os.close(r)
        if why == "timeout":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            why = f"a batch took longer than {batch_timeout_s:g} s (its process loads the model and runs one forward)"
        left = _sweep()
        if left and why is None:
            why = f"tampering: the forward left {left} process(es) running"
        if why is None and os.getpid() == 1 and ipc_state() != clean:  # in our own IPC namespace only
            why = "tampering: the forward left System V IPC objects or keys behind"
        if why is not None:
            message = why.encode()
            proto_out.write(struct.pack("<Q", ERROR_BIT | len(message)) + message)
            return
        assert answer is not None
        _write_all(proto_out.fileno(), answer)
        answer[:] = bytes(len(answer))


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: python -m centaur.agentcode.scorer SCRIPT MODEL BATCH_TIMEOUT_S")
    serve(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))


if __name__ == "__main__":
    main()
