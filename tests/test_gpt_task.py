"""The bundled GPT task: offline corpus, config rejection, summary block, divergence and OOM behaviour."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from centaur.config import load_config
from centaur.runner.inject import inject
from centaur.space import load_space

TASK_DIR = Path(__file__).resolve().parents[1] / "centaur" / "tasks" / "gpt"
SUMMARY_LINE = re.compile(r"^(\w+):\s+(-?[0-9.eE+-]+|nan|inf)")
SUMMARY_KEYS = {
    "val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "peak_rss_mb", "mfu_percent",
    "total_tokens_M", "num_steps", "num_params_M", "depth", "tokens_per_second",
}  # fmt: skip
HYPERPARAMETERS = [
    "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "EMBEDDING_LR",
    "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC",
]  # fmt: skip
# Short runs: a few seconds of training and a small evaluation.
QUICK = {"TIME_BUDGET": 2, "EVAL_BYTES": 2**12}
SMALL_MODEL = {"DEPTH": 2, "ASPECT_RATIO": 32, "DEVICE_BATCH_SIZE": 8, "TOTAL_BATCH_SIZE": 2**11}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpt_data")


def load_prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpt_prepare_under_test", TASK_DIR / "prepare.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_copy(dest: Path, overrides: dict[str, Any]) -> Path:
    """Copy of the task directory with constants replaced the way the tuner does it."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASK_DIR / "prepare.py", dest / "prepare.py")
    source = (TASK_DIR / "train.py").read_text(encoding="utf-8")
    (dest / "train.py").write_text(inject(source, overrides, "train.py"), encoding="utf-8")
    return dest


def run_train(
    workdir: Path, data_dir: Path, memory_cap: int | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    def limit() -> None:
        if memory_cap:
            resource.setrlimit(resource.RLIMIT_DATA, (memory_cap, memory_cap))

    full_env = {**os.environ, "CENTAUR_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        [sys.executable, "train.py"], cwd=workdir, env=full_env, capture_output=True, text=True,
        timeout=timeout, preexec_fn=limit,
    )  # fmt: skip


def summary(stdout: str) -> dict[str, float]:
    lines = stdout.replace("\r", "\n").splitlines()
    assert "---" in lines, stdout[-2000:]
    values = {}
    for line in lines[lines.index("---") + 1 :]:
        m = SUMMARY_LINE.match(line)
        assert m, f"unparsable summary line {line!r}"
        values[m.group(1)] = float(m.group(2))
    return values


# ---------------------------------------------------------------------------------------------
# Fast tests


def test_stdlib_corpus_is_deterministic(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare = load_prepare()
    first = prepare.build_stdlib_corpus()
    second = prepare.build_stdlib_corpus()
    assert first == second
    assert 4 * 2**20 < len(first) <= prepare.TARGET_BYTES
    assert all(b"/test/" not in p.as_posix().encode() for p in prepare.stdlib_files())
    monkeypatch.setenv("CENTAUR_DATA_DIR", str(data_dir))
    out = prepare.ensure_corpus()
    meta = (out / "meta.json").read_text()
    assert hashlib.sha256(first).hexdigest() in meta
    train, val = prepare.load_split()
    train2, val2 = prepare.split_blob(first)
    assert train.tobytes() == train2.tobytes() and val.tobytes() == val2.tobytes()
    assert len(train) + len(val) == len(first)
    assert len(val) > 2**18 + 1  # enough for the CPU-scale EVAL_BYTES


def test_prepare_source_directory(tmp_path: Path) -> None:
    src = tmp_path / "texts"
    (src / "sub").mkdir(parents=True)
    for i in range(30):
        (src / ("sub" if i % 2 else "") / f"story_{i:02d}.txt").write_text(f"Once upon a time {i}. " * 400)
    (src / "ignored.bin").write_bytes(b"\x00\x01" * 1000)
    env = {**os.environ, "CENTAUR_DATA_DIR": str(tmp_path / "data")}
    hashes = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, str(TASK_DIR / "prepare.py"), "--source", str(src), "--name", "tiny", "--force"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = tmp_path / "data" / "tiny"
        train, val = (out / "train.bin").read_bytes(), (out / "val.bin").read_bytes()
        assert len(val) > 0 and len(train) > len(val)
        assert b"Once upon a time 17." in train + val and b"\x01" not in train + val
        hashes.append(hashlib.sha256(train + val).hexdigest())
    assert hashes[0] == hashes[1]


def test_space_covers_the_14_hyperparameters() -> None:
    space = load_space(TASK_DIR / "train.py")
    assert sorted(space.names) == sorted(HYPERPARAMETERS)
    assert not space.violations(space.defaults())
    for name in ("SEED", "MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_BYTES"):
        assert name not in space
    config = load_config(TASK_DIR / "centaur.toml")
    assert config.runner.memory_cap_bytes and config.runner.trial_timeout_s


def test_invalid_batch_config_exits_3_before_training(tmp_path: Path, data_dir: Path) -> None:
    work = task_copy(tmp_path / "task", {**QUICK, "TOTAL_BATCH_SIZE": 1000})
    r = run_train(work, data_dir, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert re.search(r"^INVALID: TOTAL_BATCH_SIZE", r.stdout, re.MULTILINE)
    assert "step " not in r.stdout


def test_a_step_longer_than_its_share_of_the_budget_ends_the_run_at_once(tmp_path: Path, data_dir: Path) -> None:
    # TIME_BUDGET 2 s: a step may take 5 s (the floor). 4 layers x 256 wide at 2**16 tokens per step is ~1.2
    # TFLOP a step, tens of seconds to a minute on a CPU, so the watchdog ends the first step before it returns.
    config = {**QUICK, "DEPTH": 4, "ASPECT_RATIO": 64, "HEAD_DIM": 64, "TOTAL_BATCH_SIZE": 2**16,
              "DEVICE_BATCH_SIZE": 8}  # fmt: skip
    work = task_copy(tmp_path / "task", config)
    r = run_train(work, data_dir, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert re.search(r"^INVALID: one optimizer step took more than 5.0 s \(1/4 of TIME_BUDGET = 2 s, at least 5 s\)",
                     r.stdout, re.MULTILINE), r.stdout  # fmt: skip
    assert "step 00001" not in r.stdout  # ended inside the first step, not after it
    assert "tokens per step" in r.stdout and "val_bpb" not in r.stdout


# ---------------------------------------------------------------------------------------------
# Tests that train


@pytest.mark.slow
def test_summary_block_parses(tmp_path: Path, data_dir: Path) -> None:
    work = task_copy(tmp_path / "task", {**QUICK, **SMALL_MODEL})
    r = run_train(work, data_dir, CENTAUR_SEED="1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    values = summary(r.stdout)
    assert SUMMARY_KEYS <= set(values)
    assert 0 < values["val_bpb"] < 8.5
    assert values["training_seconds"] >= QUICK["TIME_BUDGET"]
    assert values["num_steps"] >= 3 and values["depth"] == SMALL_MODEL["DEPTH"]
    assert values["peak_rss_mb"] > 0 and values["tokens_per_second"] > 0


@pytest.mark.slow
def test_default_config_runs_under_the_memory_cap(tmp_path: Path, data_dir: Path) -> None:
    cap = load_config(TASK_DIR / "centaur.toml").runner.memory_cap_bytes
    work = task_copy(tmp_path / "task", QUICK)
    r = run_train(work, data_dir, memory_cap=cap)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert summary(r.stdout)["val_bpb"] < 8.5


@pytest.mark.slow
def test_diverging_config_fails(tmp_path: Path, data_dir: Path) -> None:
    huge = {"EMBEDDING_LR": 1e30, "UNEMBEDDING_LR": 1e30, "MATRIX_LR": 1e30, "SCALAR_LR": 1e30}
    work = task_copy(tmp_path / "task", {**QUICK, **SMALL_MODEL, **huge, "TIME_BUDGET": 30})
    r = run_train(work, data_dir)
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.search(r"^FAIL: loss diverged at step \d+$", r.stdout, re.MULTILINE)
    assert "---" not in r.stdout.splitlines()


@pytest.mark.slow
def test_config_over_the_memory_cap_fails_with_oom(tmp_path: Path, data_dir: Path) -> None:
    cap = load_config(TASK_DIR / "centaur.toml").runner.memory_cap_bytes
    space = load_space(TASK_DIR / "train.py")
    # The largest corner of the space: it must be a real out-of-memory failure, not a slow run.
    big = {name: int(space[name].high) for name in ("DEPTH", "ASPECT_RATIO", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE")}
    # TIME_BUDGET 240 s puts the step guard at 60 s (a quarter of it): on a loaded machine the first step can
    # take more than the 5 s of QUICK's guard before its allocations reach the cap, and this test is the cap's.
    work = task_copy(tmp_path / "task", {**QUICK, **big, "TIME_BUDGET": 240})
    r = run_train(work, data_dir, memory_cap=cap, timeout=300)
    assert r.returncode not in (0, 3, 4), r.stdout[-2000:]
    output = r.stdout + r.stderr
    oom = r"DefaultCPUAllocator: can't allocate memory|MemoryError|Cannot allocate memory"
    assert re.search(oom, output), output[-3000:]
