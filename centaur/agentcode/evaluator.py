"""The metric computed outside the edited program (issue #18 item 2), for tasks that declare their
evaluation: the bundled GPT task, whose protected `evaluate_bpb(model, val, batch, device, autocast)` is
the declared evaluation.

1. The training run (harness.py, handover mode) sees a corpus folder with the real `train.bin` and a
   placeholder `val.bin` (zeros of the same length). Its protected `evaluate_bpb` is replaced by a stub
   that saves the model it is given (`torch.save` of the module) to the trial's output folder and ends
   the process: the training time is the parent's clock up to that moment.
2. A second sandboxed process (`python -m centaur.agentcode.evaluator SCRIPT MODEL`) loads the edited
   module without running `main()`, loads the model, and answers forward passes on a pipe: token windows
   in, the logits that reach `F.cross_entropy` out. It never sees the targets or the validation file.
3. The trusted parent (`evaluate_out_of_process`) streams the windows of the ORIGINAL `evaluate_bpb`,
   holds the targets, computes the nats and bits per byte itself, and checks causality (changing the
   later tokens of sampled windows must not change the earlier positions' logits) and determinism (a
   repeated batch gives the same logits). A failure is reported as tampering.

Protocol on the pipe (little-endian): the model process first answers `<Q` 0 once loaded; a request
is `<II` (batch, length) then batch*length uint8 tokens, (0, 0) to finish; the answer is `<Q` byte
count then that many bytes of float32 logits (batch, length, vocab).
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FUNCTION = "evaluate_bpb"
MODEL_FILE = "centaur_model.pt"  # in the trial's output folder
VOCAB_SIZE = 256
_BUNDLED = Path(__file__).resolve().parents[1] / "tasks" / "gpt" / "train.py"
_N_CAUSAL = 4  # windows checked for causality
_MAX_BATCH = 16


# -- what the task declares ---------------------------------------------------------------------------
def _function(tree: ast.AST, name: str) -> ast.FunctionDef | None:
    return next((n for n in getattr(tree, "body", []) if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _number(node: ast.AST) -> float | int:
    """A constant arithmetic expression (`2**17`, `256`), evaluated without eval."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.Mult, ast.Add, ast.Sub, ast.FloorDiv)):
        a, b = _number(node.left), _number(node.right)
        ops = {ast.Pow: lambda: a**b, ast.Mult: lambda: a * b, ast.Add: lambda: a + b, ast.Sub: lambda: a - b,
               ast.FloorDiv: lambda: a // b}
        return ops[type(node.op)]()
    raise ValueError(f"not a constant number: {ast.dump(node)[:80]}")


def _constants(tree: ast.AST) -> dict[str, object]:
    out: dict[str, object] = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                if isinstance(node.value, ast.Dict):
                    out[name] = {ast.literal_eval(k): _number(v) for k, v in zip(node.value.keys, node.value.values,
                                                                                  strict=True) if k is not None}
                else:
                    out[name] = _number(node.value)
            except (ValueError, KeyError, TypeError):
                continue
    return out


@dataclass
class Evaluation:
    """The declared evaluation of a task: what the parent needs to stream the original windows."""

    seq_len: int
    eval_bytes: int
    gpu_scale: dict[str, int] = field(default_factory=dict)

    def settings(self, env: Mapping[str, str]) -> tuple[int, int]:
        """(MAX_SEQ_LEN, EVAL_BYTES) of the original script under the run's environment (GPU scale)."""
        if env.get("CENTAUR_GPT_SCALE", "").strip().lower() == "gpu":
            return int(self.gpu_scale.get("MAX_SEQ_LEN", self.seq_len)), int(self.gpu_scale.get("EVAL_BYTES",
                                                                                                 self.eval_bytes))
        return self.seq_len, self.eval_bytes


def declared_evaluation(script: Path) -> Evaluation | None:
    """The evaluation `script` declares, or None: a top-level `evaluate_bpb` identical to the bundled
    task's (same code, so the parent's computation is the same one), literal `MAX_SEQ_LEN` and
    `EVAL_BYTES`, and a sibling prepare.py that serves the split from $CENTAUR_DATA_DIR."""
    try:
        tree = ast.parse(Path(script).read_text(encoding="utf-8"))
        bundled = ast.parse(_BUNDLED.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    mine, theirs = _function(tree, FUNCTION), _function(bundled, FUNCTION)
    if mine is None or theirs is None or ast.dump(mine) != ast.dump(theirs):
        return None
    prepare = Path(script).parent / "prepare.py"
    try:
        prep = prepare.read_text(encoding="utf-8")
    except OSError:
        return None
    if "CENTAUR_DATA_DIR" not in prep or "def load_split" not in prep:
        return None
    consts = _constants(tree)
    seq, nbytes = consts.get("MAX_SEQ_LEN"), consts.get("EVAL_BYTES")
    if not isinstance(seq, int) or not isinstance(nbytes, int) or seq < 1 or nbytes < seq:
        return None
    gpu = consts.get("_GPU_SCALE")
    return Evaluation(seq, nbytes, {k: int(v) for k, v in gpu.items()} if isinstance(gpu, dict) else {})


# -- the data views ----------------------------------------------------------------------------------
def training_view(data_dir: Path, corpus: str, dest: Path) -> Path:
    """A corpus folder for the training run: the real train.bin and meta.json, a placeholder val.bin
    (zeros of the same length). Returns the folder to use as $CENTAUR_DATA_DIR."""
    src, out = Path(data_dir) / corpus, Path(dest) / corpus
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train.bin", "meta.json"):
        target = out / name
        if target.exists() and target.stat().st_size == (src / name).stat().st_size:
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(src / name, target)
        except OSError:
            shutil.copyfile(src / name, target)
    placeholder = out / "val.bin"
    size = (src / "val.bin").stat().st_size
    if not placeholder.is_file() or placeholder.stat().st_size != size:
        with open(placeholder, "wb") as f:
            f.truncate(size)  # zeros, sparse
    return Path(dest)


def validation_windows(val: np.ndarray, seq_len: int, eval_bytes: int) -> np.ndarray:
    """The (n, seq_len + 1) windows of the original evaluate_bpb."""
    n_seq = eval_bytes // seq_len
    if n_seq < 1 or n_seq * seq_len + 1 > len(val):
        raise ValueError(f"validation split has {len(val)} bytes, EVAL_BYTES needs {n_seq * seq_len + 1}")
    starts = np.linspace(0, len(val) - seq_len - 1, n_seq).astype(np.int64)
    return val[starts[:, None] + np.arange(seq_len + 1)]


# -- the parent's side -------------------------------------------------------------------------------
class EvaluationError(RuntimeError):
    """The model process failed (crash, bad answer, timeout): the trial fails, the metric is not known."""


@dataclass
class EvalResult:
    value: float | None = None  # bits per byte
    nats: float | None = None
    tampering: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0  # the whole evaluation, the model process's start-up included
    score_seconds: float = 0.0  # the forward passes and the checks only
    max_causal_diff: float = 0.0
    max_repeat_diff: float = 0.0


class _Client:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def _read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        chunks, got = [], 0
        while got < n:
            chunk = self.proc.stdout.read(n - got)
            if not chunk:
                raise EvaluationError("the model process ended before answering")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def ready(self) -> None:
        """Wait for the model process to have loaded the model (it answers a zero count)."""
        if struct.unpack("<Q", self._read(8))[0] != 0:
            raise EvaluationError("the model process did not start the protocol")

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        assert self.proc.stdin is not None
        b, t = tokens.shape
        try:
            self.proc.stdin.write(struct.pack("<II", b, t) + np.ascontiguousarray(tokens, dtype=np.uint8).tobytes())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise EvaluationError(f"the model process stopped reading: {e}") from None
        (n,) = struct.unpack("<Q", self._read(8))
        if n != b * t * VOCAB_SIZE * 4:
            raise EvaluationError(f"the model answered {n} bytes, expected logits of shape ({b}, {t}, {VOCAB_SIZE})")
        out = np.frombuffer(self._read(n), dtype=np.float32).reshape(b, t, VOCAB_SIZE)
        if not np.isfinite(out).all():
            raise EvaluationError("the model answered non-finite logits")
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(struct.pack("<II", 0, 0))  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]


def nats_of(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy (nats) of `targets` under `logits`, in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=-1)) + m[..., 0]
    picked = np.take_along_axis(x, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return float((lse - picked).sum())


def score(client: _Client, windows: np.ndarray, *, batch: int = _MAX_BATCH, seed: int = 0) -> EvalResult:
    """Stream `windows` through `client`; bits per byte, and the causality and determinism checks."""
    if hasattr(client, "ready"):
        client.ready()
    t0 = time.perf_counter()
    result = EvalResult()
    n, t1 = windows.shape
    seq = t1 - 1
    inputs, targets = windows[:, :-1], windows[:, 1:]
    total, first = 0.0, None
    for i in range(0, n, batch):
        logits = client.logits(inputs[i:i + batch])
        if first is None:
            first = logits
        total += nats_of(logits, targets[i:i + batch])
    assert first is not None
    scale = 1.0 + float(np.abs(first).max())
    tol = 1e-4 * scale  # exact on CPU; room for reordered GPU reductions
    again = client.logits(inputs[:min(batch, n)])
    result.max_repeat_diff = float(np.abs(again - first).max())
    if result.max_repeat_diff > tol:
        result.tampering.append(f"not deterministic: a repeated batch changed the logits by up to "
                                f"{result.max_repeat_diff:.3g} (tolerance {tol:.3g}); the model may learn from the "
                                "evaluation stream")
    rng = np.random.default_rng(seed)
    picks = rng.choice(n, size=min(_N_CAUSAL, n), replace=False)
    cut = max(1, seq // 2)
    sample = inputs[picks].copy()
    base = client.logits(sample)
    perturbed = sample.copy()
    shift = rng.integers(1, VOCAB_SIZE, size=perturbed[:, cut:].shape)
    perturbed[:, cut:] = (perturbed[:, cut:].astype(np.int64) + shift) % VOCAB_SIZE
    changed = client.logits(perturbed)
    result.max_causal_diff = float(np.abs(changed[:, :cut] - base[:, :cut]).max())
    if result.max_causal_diff > tol:
        result.tampering.append(f"not causal: changing the tokens after position {cut} changed the logits of earlier "
                                f"positions by up to {result.max_causal_diff:.3g} (tolerance {tol:.3g}); the model "
                                "looks ahead")
    client.close()
    result.nats = total
    result.value = total / (n * seq) / math.log(2)
    result.score_seconds = result.seconds = time.perf_counter() - t0
    return result


def evaluate_out_of_process(
    command: Sequence[str],
    windows: np.ndarray,
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    preexec_fn=None,
) -> EvalResult:
    """Run the model process `command` (already wrapped in its sandbox) and score `windows` through it."""
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                cwd=cwd, env=dict(env), preexec_fn=preexec_fn, start_new_session=True)
    timer = threading.Timer(timeout_s, _kill, (proc,))
    timer.start()
    try:
        result = score(_Client(proc), windows)
    except EvaluationError as e:
        result = EvalResult(error=f"out-of-process evaluation failed: {e}")
        _kill(proc)
    finally:
        timer.cancel()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
    if result.error and time.perf_counter() - t0 >= timeout_s:
        result.error = f"out-of-process evaluation stopped at {timeout_s:.0f} s"
    result.seconds = time.perf_counter() - t0
    return result


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.killpg(proc.pid, 9)


# -- the model process -------------------------------------------------------------------------------
def load_edited_module(script: Path) -> types.ModuleType:
    """Execute the edited script as a module without running main(), registered as `__main__` (the name
    its classes had when the training run pickled the model)."""
    module = types.ModuleType("__centaur_model__")
    module.__file__ = str(script)
    sys.path.insert(0, str(Path(script).parent))
    code = compile(Path(script).read_text(encoding="utf-8"), str(script), "exec")
    exec(code, module.__dict__)  # noqa: S102 - the model process is itself sandboxed
    sys.modules["__main__"] = module
    return module


def load_model(script: Path, path: Path, device: str = "cpu"):
    import torch

    load_edited_module(script)
    model = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the handed-over object is a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    return model


def _serve(script: Path, model_path: Path) -> None:
    proto_out = os.fdopen(os.dup(1), "wb")
    proto_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # whatever the edited module prints goes to the log, not into the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(max(1, int(os.environ.get("CENTAUR_THREADS") or len(os.sched_getaffinity(0)))))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(script, model_path, device)
    captured: list = []
    original = F.cross_entropy

    def capture(input, target, *args, **kwargs):  # noqa: A002 - F.cross_entropy's own names
        captured.append(input.detach())
        return original(input, target, *args, **kwargs)

    F.cross_entropy = capture
    proto_out.write(struct.pack("<Q", 0))  # ready
    proto_out.flush()
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")
    while True:
        header = proto_in.read(8)
        if len(header) < 8:
            return
        b, t = struct.unpack("<II", header)
        if b == 0:
            return
        tokens = np.frombuffer(proto_in.read(b * t), dtype=np.uint8).reshape(b, t)
        x = torch.from_numpy(tokens.astype(np.int64)).to(device)
        captured.clear()
        with torch.no_grad(), autocast:
            model(x, torch.zeros_like(x), reduction="sum")
        if len(captured) != 1:
            raise RuntimeError(f"the model's forward called F.cross_entropy {len(captured)} times, not once")
        logits = captured[0].float().reshape(b, t, -1).cpu().numpy().astype(np.float32)
        data = np.ascontiguousarray(logits).tobytes()
        proto_out.write(struct.pack("<Q", len(data)) + data)
        proto_out.flush()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m centaur.agentcode.evaluator SCRIPT MODEL")
    _serve(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
