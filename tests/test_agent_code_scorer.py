"""agent-code's scorer, attacked with hand-built models (issue #29): each attack is a model an edit could
hand over, served by the real model process (centaur/agentcode/scorer.py) in its real sealed sandbox,
or, for the checks alone, a NumPy stand-in through `score`. Every test asserts that the attack ran (its
own log lines, or the rows it was shown) and what it reached."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from centaur.agentcode.bwrap import sandbox_problem
from centaur.agentcode.evaluator import LOGIT_LIMIT, EvalResult, EvaluationError, evaluate_out_of_process, score
from centaur.agentcode.sandbox import limits, model_process

torch = pytest.importorskip("torch")
needs_sandbox = pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")
T = 32  # window length of these tests

MODEL = '''\
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

V = 256


def attack(x):
    """Overridden by each test."""
    return None


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(V, V, generator=torch.Generator().manual_seed(0)))

    def forward(self, idx, targets, reduction="mean"):
        logits = self.table[idx]
        extra = attack(idx)
        if extra is not None:
            logits = logits + extra
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1), reduction=reduction)
'''


def held_out(n: int = 20000, seed: int = 1) -> np.ndarray:
    """Text-like bytes: the scorer's twins splice in text from here."""
    rng = np.random.default_rng(seed)
    return rng.integers(32, 127, size=n).astype(np.uint8)


def windows_of(val: np.ndarray, n: int) -> np.ndarray:
    starts = np.linspace(0, len(val) - T - 1, n).astype(np.int64)
    return val[starts[:, None] + np.arange(T + 1)]


def serve(tmp_path: Path, attack: str, *, n: int = 32, batch_timeout_s: float = 30.0) -> tuple[EvalResult, str]:
    """Hand over `Model` with `attack` (source of `def attack(x)`), score `n` windows through the sandboxed
    model process; returns the result and the model process's log (the attack's own lines)."""
    task = tmp_path / "task"
    task.mkdir()
    script = tmp_path / "train.py"
    script.write_text(MODEL + "\n\n" + textwrap.dedent(attack))
    main = sys.modules["__main__"]
    module = types.ModuleType("__main__")  # what the training run pickles its classes under
    try:
        sys.modules["__main__"] = module
        exec(compile(script.read_text(), str(script), "exec"), module.__dict__)  # noqa: S102 - our own model
        torch.save(module.Model(), tmp_path / "centaur_model.pt")
    finally:
        sys.modules["__main__"] = main
    command, env = model_process(script, tmp_path / "centaur_model.pt", task_dir=task, batch_timeout_s=batch_timeout_s,
                                 extra_env={"CENTAUR_THREADS": "1"})
    val = held_out()
    log = tmp_path / "evaluation.log"
    result = evaluate_out_of_process(command, windows_of(val, n), val, env=env, cwd=Path("/"), log_path=log,
                                     timeout_s=120, preexec_fn=limits(2**32, no_queues=True))
    return result, log.read_text(errors="replace")


def attack_lines(log: str) -> list[str]:
    return re.findall(r"^ATTACK (.*)$", log, re.MULTILINE)


@needs_sandbox
def test_honest_model_is_scored_exactly(tmp_path):
    result, log = serve(tmp_path, "def attack(x):\n    return None\n")
    assert result.error is None and result.tampering == [], (result, log)
    table = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)).numpy()
    w = windows_of(held_out(), 32)
    lp = table[w[:, :-1]].astype(np.float64)
    lp = lp - np.log(np.exp(lp - lp.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lp.max(-1, keepdims=True)
    expected = -np.take_along_axis(lp, w[:, 1:, None].astype(np.int64), -1).sum() / w[:, 1:].size / np.log(2)
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert result.max_causal_diff == 0 and result.max_repeat_diff == 0 and result.checked_windows >= 16


@needs_sandbox
def test_no_state_reaches_the_next_batch(tmp_path):
    """The model tries every place to keep what it was shown: module and class state, a file in /tmp,
    /dev/shm and HOME, POSIX shared memory, the environment. Each batch is a fresh child: it finds nothing,
    and its writes fail on the read-only file system."""
    result, log = serve(tmp_path, '''
        import glob

        SEEN = []


        def attack(x):
            found = [len(SEEN), len(getattr(Model, "memory", [])), os.environ.get("CENTAUR_SEEN", ""),
                     sorted(p for p in glob.glob("/tmp/*") + glob.glob("/dev/shm/*") if "seen" in p)]
            SEEN.append(x.clone())
            Model.memory = [x.clone()]
            os.environ["CENTAUR_SEEN"] = "1"
            wrote = []
            for path in ("/tmp/seen.bin", "/dev/shm/seen", os.path.expanduser("~/seen.bin"), "/trial/seen.bin"):
                try:
                    with open(path, "wb") as f:
                        f.write(x.numpy().tobytes())
                    wrote.append(path)
                except OSError as e:
                    wrote.append(type(e).__name__)
            try:
                from multiprocessing import shared_memory
                shared_memory.SharedMemory(name="centaur_seen", create=True, size=x.numel())
                wrote.append("shm")
            except Exception as e:
                wrote.append(type(e).__name__)
            parent = []  # the zygote (PID 1) holds the pipes and forked this child: its memory, its descriptors
            for path in ("/proc/1/mem", "/proc/1/fd/0", "/proc/1/environ"):
                try:
                    open(path, "rb").read(1)
                    parent.append(path)
                except OSError as e:
                    parent.append(type(e).__name__)
            print("ATTACK found", found, "wrote", wrote, "parent", parent, file=sys.stderr, flush=True)
            return None
        ''')
    lines = attack_lines(log)
    assert result.error is None and result.tampering == [], (result, log)
    assert len(lines) == result.batches >= 3  # the attack ran in every batch
    for line in lines:
        assert line.startswith("found [0, 0, '', []]"), line  # nothing from an earlier batch
        wrote, parent = line.split("wrote")[1].split("parent")
        assert "shm" not in wrote and "/" not in wrote, line  # no write succeeded
        assert "/proc" not in parent and "PermissionError" in parent, line  # the zygote is not readable


@needs_sandbox
def test_a_process_left_behind_is_tampering(tmp_path):
    """A forward that leaves a process running (to hold what it saw for the next batch) is caught."""
    result, log = serve(tmp_path, '''
        def attack(x):
            if os.fork() == 0:
                import time
                time.sleep(60)
                os._exit(0)
            print("ATTACK forked", file=sys.stderr, flush=True)
            return None
        ''')
    assert attack_lines(log) == ["forked"]
    assert result.error is not None and "tampering: the forward left 1 process(es) running" in result.error


@needs_sandbox
def test_system_v_shared_memory_left_behind_is_tampering(tmp_path):
    result, log = serve(tmp_path, '''
        def attack(x):
            import ctypes
            shmid = ctypes.CDLL(None, use_errno=True).shmget(0x2929, 4096, 0o1600)  # IPC_CREAT | 0600
            print("ATTACK shmget", shmid, file=sys.stderr, flush=True)
            return None
        ''')
    lines = attack_lines(log)
    assert len(lines) == 1 and int(lines[0].split()[1]) >= 0  # the segment was made
    assert result.error is not None and "System V IPC" in result.error


@needs_sandbox
def test_work_at_load_time_is_bounded(tmp_path):
    """Code that runs when the model is unpickled (here: at module load) to train on whatever it finds gets
    no data path (no $CENTAUR_DATA_DIR, no /data) and is stopped at the batch's time limit."""
    result, log = serve(tmp_path, '''
        import time

        if __name__ != "__main__":  # in the model process (here, in the test, the model is only built)
            print("ATTACK data", os.environ.get("CENTAUR_DATA_DIR"), os.path.exists("/data"), file=sys.stderr,
                  flush=True)
            time.sleep(10)  # the "training"


        def attack(x):
            return None
        ''', batch_timeout_s=3)
    assert attack_lines(log) == ["data None False"]
    assert result.error is not None and "took longer than 3 s" in result.error


class Stand:
    """A stand-in for the model process (the checks alone): bigram logits, optionally cheating."""

    def __init__(self, cheat=None) -> None:
        self.table = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
        self.cheat, self.rows = cheat, []

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        self.rows.append(tokens.copy())
        out = self.table[tokens].copy()
        if self.cheat is not None:
            self.cheat(tokens, out)
        return out


def _peek(tokens: np.ndarray, out: np.ndarray, positions: slice = slice(None)) -> None:
    """Look ahead: a large logit on the next byte, at `positions`."""
    nxt = np.roll(tokens, -1, axis=1)
    b, t = np.indices(tokens.shape)
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[:, positions] = True
    mask[:, -1] = False
    out[b[mask], t[mask], nxt[mask]] += 20.0


def test_check_rows_cannot_be_told_from_scored_rows():
    """The old checks sent random bytes after the cut and came last; this model cheats only on batches of
    printable text and on the first batches. The twins are real text in mixed batches: it is caught."""
    val = held_out()
    w = windows_of(val, 64)
    calls = []

    def sly(tokens, out):
        calls.append(1)
        if (tokens < 128).all() or len(calls) <= 4:
            _peek(tokens, out)

    model = Stand(sly)
    result = score(model, w, val, batch=16)
    assert len(calls) == result.batches and all(len(r) == 16 for r in model.rows)  # one shape for every batch
    assert result.value < 1.0  # the cheat worked on the scored rows...
    assert any("not causal" in t for t in result.tampering)  # ...and was seen


def test_lookahead_at_positions_the_old_check_skipped_is_caught():
    """The old check compared only the first half of 4 windows; this model looks ahead in the second half."""
    val = held_out()
    w = windows_of(val, 64)
    result = score(Stand(lambda tok, out: _peek(tok, out, slice(T // 2, None))), w, val, batch=16)
    assert any("not causal" in t for t in result.tampering), result
    late = score(Stand(lambda tok, out: _peek(tok, out, slice(T - 4, None))), w, val, batch=16)
    assert any("not causal" in t for t in late.tampering), late  # the last 4 positions only: still caught


def test_extreme_logits_are_refused_and_widen_nothing():
    """Full attention plus a large negative logit on bytes that never occur: the old tolerance grew with
    max |logit|. Beyond LOGIT_LIMIT the answer is refused; below it, log-probabilities are compared."""
    val = held_out()
    w = windows_of(val, 64)

    def loud(tokens, out, size):
        _peek(tokens, out)
        out[..., :32] = -size  # control bytes: never in this text

    with pytest.raises(EvaluationError, match="logits beyond"):
        score(Stand(lambda t, o: loud(t, o, 1e6)), w, val, batch=16)
    result = score(Stand(lambda t, o: loud(t, o, LOGIT_LIMIT / 2)), w, val, batch=16)
    assert any("not causal" in t for t in result.tampering), result
    with pytest.raises(EvaluationError, match="non-finite"):
        score(Stand(lambda t, o: o.__setitem__((0, 0, 0), np.inf)), w, val, batch=16)


def test_a_model_that_learns_from_earlier_batches_is_caught_in_process():
    """Were state to survive (it does not: see test_no_state_reaches_the_next_batch), a model that adapts
    to what it has seen changes its answer to repeats and twins."""
    val = held_out()
    w = windows_of(val, 64)
    seen = np.zeros((256, 256))

    def learner(tokens, out):
        out += seen[tokens].astype(np.float32)
        np.add.at(seen, (tokens[:, :-1], tokens[:, 1:]), 1.0)

    result = score(Stand(learner), w, val, batch=16)
    assert any("not deterministic" in t or "not causal" in t for t in result.tampering), result
