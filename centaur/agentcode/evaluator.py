"""The metric computed outside the edited program (issues #18, #29), for tasks that declare their
evaluation: the bundled GPT task, whose protected `evaluate_bpb(model, val, batch, device, autocast)` is
the declared evaluation.

1. The training run (harness.py, handover mode) sees the training split and a placeholder `val.bin`
   (heldout.py: the held-out bytes are in no file it can read). Its protected `evaluate_bpb` is
   replaced by a stub that saves the model it is given and ends the process.
2. The model process (scorer.py) runs in its own sealed sandbox: nothing writable, no data. It imports
   torch and forks one fresh child per batch; the child loads the edited module and the model, answers
   that one batch and exits, so nothing carries over from one batch to the next.
3. The tuner (`score`) sends the windows of the ORIGINAL `evaluate_bpb` over the held-out split, with
   check rows mixed in (`schedule`): twins (a scored window's bytes up to a secret cut, other held-out
   text after it) and repeats, in batches of one size and secret order. It computes log-probabilities
   itself (float64), scores the windows, and compares every twin and repeat with its original.

Protocol on the pipe (little-endian): the model process first answers `<Q` 0 when ready; a request
is `<II` (batch, length) then batch*length uint8 tokens, (0, 0) to finish; the answer is `<Q` byte
count then that many bytes of float32 logits (batch, length, vocab), or `<Q` ERROR_BIT | length then a
message of the model process's own (never text of the edit's).
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FUNCTION = "evaluate_bpb"
MODEL_FILE = "centaur_model.pt"  # in the trial's output folder
VOCAB_SIZE = 256
_BUNDLED = Path(__file__).resolve().parents[1] / "tasks" / "gpt" / "train.py"
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


# -- the windows -------------------------------------------------------------------------------------
def validation_windows(val: np.ndarray, seq_len: int, eval_bytes: int) -> np.ndarray:
    """The (n, seq_len + 1) windows of the original evaluate_bpb."""
    n_seq = eval_bytes // seq_len
    if n_seq < 1 or n_seq * seq_len + 1 > len(val):
        raise ValueError(f"validation split has {len(val)} bytes, EVAL_BYTES needs {n_seq * seq_len + 1}")
    starts = np.linspace(0, len(val) - seq_len - 1, n_seq).astype(np.int64)
    return val[starts[:, None] + np.arange(seq_len + 1)]




# -- the schedule: scored windows, and check windows mixed in ----------------------------------------
CHECK_FRACTION = 0.25  # of the scored windows, each checked for causality against a spliced twin
MIN_CHECKS = 16
LOGIT_LIMIT = 1e4  # |logit| above this is refused: no honest model needs it, and it would hide in a tolerance
FLOOR = -30.0  # log-probabilities compared above this only (an impossible byte's -1e6 vs -1e6+1 is no signal)
TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}  # max |log p - log p'| of the same prefix in two batches
GAIN_TOLERANCE = {"cpu": 1e-4, "cuda": 5e-3}  # mean gain of log p(target) on scored rows over their twins


@dataclass
class Schedule:
    """What is sent to the model: the `n` scored rows first (rows[:n]), then the check rows, in batches of
    one size whose order and composition are secret; a check row never shares a batch with its original."""

    rows: np.ndarray  # (m, T) uint8 inputs
    n: int
    twins: list[tuple[int, int, int]]  # (scored row, twin row, cut): the twin equals the scored row before `cut`
    repeats: list[tuple[int, int]]  # (scored row, repeated row)
    batches: list[np.ndarray]


def schedule(windows: np.ndarray, held_out: np.ndarray, batch: int, rng: np.random.Generator,
             check_fraction: float = CHECK_FRACTION) -> Schedule:
    """Twins: a scored window's first `cut` bytes (cut uniform over the window) followed by real held-out
    text from elsewhere, so a twin looks like any window; repeats: exact copies. Enough of them are added
    that every batch has `batch` rows."""
    n, t = windows.shape[0], windows.shape[1] - 1
    inputs = windows[:, :-1]
    n_twins = min(n, max(MIN_CHECKS, math.ceil(n * check_fraction)))
    n_repeats = min(n, max(2, n // 16))
    n_twins += (-(n + n_twins + n_repeats)) % batch  # fill the last batch with more twins
    rows = [inputs]
    twins, repeats = [], []
    sources = np.concatenate([rng.permutation(n) for _ in range(n_twins // n + 1)])[:n_twins]
    for k, i in enumerate(sources):
        cut = int(rng.integers(1, t)) if t > 1 else 1
        start = int(rng.integers(0, len(held_out) - t + 1))
        row = np.concatenate([inputs[i, :cut], held_out[start + cut:start + t]])
        rows.append(row[None])
        twins.append((int(i), n + k, cut))
    for k, i in enumerate(rng.choice(n, size=n_repeats, replace=False)):
        rows.append(inputs[i][None])
        repeats.append((int(i), n + n_twins + k))
    all_rows = np.ascontiguousarray(np.concatenate(rows).astype(np.uint8))
    partner = {j: i for i, j, _ in twins} | {j: i for i, j in repeats}
    return Schedule(all_rows, n, twins, repeats, _batches(len(all_rows), batch, partner, rng))


def _batches(m: int, batch: int, partner: dict[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """A random partition of range(m) into batches in which no check row meets its original."""
    order = rng.permutation(m)
    for _ in range(100):
        where = np.empty(m, dtype=np.int64)
        where[order] = np.arange(m) // batch
        clash = [pos for pos, r in enumerate(order) if r in partner and where[partner[r]] == where[r]]
        if not clash:
            break
        for pos in clash:  # swap with a random row elsewhere; repeat until no clash is left
            other = int(rng.integers(0, m))
            order[pos], order[other] = order[other], order[pos]
    return [order[i:i + batch] for i in range(0, m, batch)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m)


def nats_of(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy (nats) of `targets` under `logits`, in float64."""
    lp = log_softmax(logits)
    return float(-np.take_along_axis(lp, targets[..., None].astype(np.int64), axis=-1).sum())


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
    max_batch_seconds: float = 0.0  # the slowest batch: its own process, loading the model included
    max_causal_diff: float = 0.0
    causal_gain: float = 0.0  # mean log p(target) of scored rows above their twins' (nats per position)
    max_repeat_diff: float = 0.0
    batches: int = 0
    checked_windows: int = 0


ERROR_BIT = 1 << 63  # an answer whose count has this bit is an error message of the model process


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
        """Wait for the model process to be ready to fork (it answers a zero count)."""
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
        if n & ERROR_BIT:
            raise EvaluationError(self._read(min(n & ~ERROR_BIT, 4096)).decode(errors="replace"))
        if n != b * t * VOCAB_SIZE * 4:
            raise EvaluationError(f"the model answered {n} bytes, expected logits of shape ({b}, {t}, {VOCAB_SIZE})")
        return np.frombuffer(self._read(n), dtype=np.float32).reshape(b, t, VOCAB_SIZE)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(struct.pack("<II", 0, 0))  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]


def score(client: Any, windows: np.ndarray, held_out: np.ndarray, *, batch: int = _MAX_BATCH,
          rng: np.random.Generator | None = None, device: str = "cpu") -> EvalResult:
    """Stream the scheduled rows through `client` (anything with `logits(tokens) -> (b, t, V)`), batch by
    batch; bits per byte of the scored rows, from log-probabilities computed here, and the checks:
    every twin's log-probabilities before its cut, and every repeat's, must equal those of its original
    (within `TOLERANCE[device]`), and scored rows may not beat their twins on average."""
    rng = rng or np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # secret, never written
    if hasattr(client, "ready"):
        client.ready()
    t0 = time.perf_counter()
    result = EvalResult()
    plan = schedule(windows, held_out, batch, rng)
    n, t = plan.n, windows.shape[1] - 1
    lp = np.empty((len(plan.rows), t, VOCAB_SIZE), dtype=np.float64)
    for rows in plan.batches:
        b0 = time.perf_counter()
        logits = client.logits(plan.rows[rows])
        result.max_batch_seconds = max(result.max_batch_seconds, time.perf_counter() - b0)
        if not np.isfinite(logits).all():
            raise EvaluationError("the model answered non-finite logits")
        if np.abs(logits).max() > LOGIT_LIMIT:
            raise EvaluationError(f"the model answered logits beyond +-{LOGIT_LIMIT:g} "
                                  f"(max |logit| {float(np.abs(logits).max()):.3g})")
        lp[rows] = log_softmax(logits)
        result.batches += 1
    targets = windows[:, 1:].astype(np.int64)
    picked = np.take_along_axis(lp[:n], targets[..., None], axis=-1)[..., 0]
    result.nats = float(-picked.sum())
    result.value = result.nats / (n * t) / math.log(2)
    floored = np.maximum(lp, FLOOR)
    gains, count = 0.0, 0
    for i, j, cut in plan.twins:
        diff = float(np.abs(floored[i, :cut] - floored[j, :cut]).max())
        result.max_causal_diff = max(result.max_causal_diff, diff)
        if cut > 1:  # positions before cut - 1 predict the same target in both rows
            y = targets[i, :cut - 1, None]
            mine, theirs = np.take_along_axis(lp[i, :cut - 1], y, -1), np.take_along_axis(lp[j, :cut - 1], y, -1)
            gains += float((mine - theirs).sum())
            count += cut - 1
    result.causal_gain = gains / max(count, 1)
    result.checked_windows = len({i for i, _, _ in plan.twins})
    for i, j in plan.repeats:
        result.max_repeat_diff = max(result.max_repeat_diff, float(np.abs(floored[i] - floored[j]).max()))
    tol, gain_tol = TOLERANCE[device], GAIN_TOLERANCE[device]
    if result.max_causal_diff > tol:
        result.tampering.append(
            f"not causal: a window and its twin (the same bytes up to a secret cut, other text after it) got "
            f"log-probabilities up to {result.max_causal_diff:.3g} apart before the cut (tolerance {tol:g}); the "
            "model looks ahead or across the batch")
    if result.causal_gain > gain_tol:
        result.tampering.append(
            f"not causal: scored windows predicted their own next bytes {result.causal_gain:.3g} nats better on "
            f"average than their twins with the same prefix (tolerance {gain_tol:g})")
    if result.max_repeat_diff > tol:
        result.tampering.append(
            f"not deterministic: a window sent again in another batch changed its log-probabilities by up to "
            f"{result.max_repeat_diff:.3g} (tolerance {tol:g})")
    if hasattr(client, "close"):
        client.close()
    result.score_seconds = result.seconds = time.perf_counter() - t0
    return result


def evaluate_out_of_process(
    command: Sequence[str],
    windows: np.ndarray,
    held_out: np.ndarray,
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    preexec_fn=None,
    device: str = "cpu",
    log_cap_bytes: int = 4 * 2**20,
) -> EvalResult:
    """Run the model process `command` (already wrapped in its sandbox) and score `windows` through it.
    Its standard error goes through a pipe (no descriptor of ours names a host path) into `log_path`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=dict(env), preexec_fn=preexec_fn, start_new_session=True)
    pump = threading.Thread(target=_copy_capped, args=(proc.stderr, log_path, log_cap_bytes), daemon=True)
    pump.start()
    timer = threading.Timer(timeout_s, _kill, (proc,))
    timer.start()
    try:
        result = score(_Client(proc), windows, held_out, device=device)
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
    pump.join(timeout=5)
    if result.error and time.perf_counter() - t0 >= timeout_s:
        result.error = f"out-of-process evaluation stopped at {timeout_s:.0f} s"
    result.seconds = time.perf_counter() - t0
    return result


def _copy_capped(stream, path: Path, cap: int) -> None:
    written = 0
    with open(path, "ab") as log:
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
            if written < cap:
                log.write(chunk[:cap - written])
                written += len(chunk)
                if written >= cap:
                    log.write(b"\n[log capped]\n")
            log.flush()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.killpg(proc.pid, 9)
