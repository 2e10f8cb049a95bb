"""Injection, metric parsing, outcome classification and real trial subprocesses of a ScriptTask."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest

from centaur.runner import InjectionError, classify, format_value, parse_metrics
from centaur.runner.inject import inject
from centaur.runner.process import scrubbed_environment
from centaur.space import find_assignments
from centaur.tasks.base import TrialStatus
from centaur.tasks.script import ScriptTask

CASES = Path(__file__).parent / "fixtures" / "runner"


def task(case: str, **kwargs) -> ScriptTask:
    return ScriptTask.from_script(CASES / case / "train.py", **kwargs)


def run(case: str, tmp_path: Path, overrides: dict | None = None, **kwargs):
    t = task(case, **kwargs)
    return t, t.evaluate({**t.space.defaults(), **(overrides or {})}, trial_number=0, run_dir=tmp_path)


# -- injection ----------------------------------------------------------------------------------
SOURCE = '''\
"""Docstring stays."""
import os

LR = 0.1  # learning rate, comment stays
TOKENS = 2**19 # tokens per step
MODE = "fast"
NAME = 'small'
WIDTH = 4 * 1024


def main():
    # nested assignment, indentation stays
    INNER_STEPS = 10
    return INNER_STEPS
'''


def test_inject_keeps_comments_formatting_and_quote_style():
    out = inject(SOURCE, {"LR": 0.2, "TOKENS": 2**20, "MODE": "slow", "NAME": "big", "WIDTH": 3000, "INNER_STEPS": 7})
    assert out == SOURCE.replace("LR = 0.1", "LR = 0.2").replace("2**19", "2**20").replace(
        '"fast"', '"slow"').replace("'small'", "'big'").replace("4 * 1024", "3000").replace(
        "INNER_STEPS = 10", "INNER_STEPS = 7")
    values = {a.name: a.value for a in find_assignments(out)}
    assert values == {"LR": 0.2, "TOKENS": 2**20, "MODE": "slow", "NAME": "big", "WIDTH": 3000, "INNER_STEPS": 7}


def test_inject_only_touches_named_values_and_first_assignment():
    src = "LR = 0.1\nLR = 0.5\nBATCH = 8\n"
    assert inject(src, {"LR": 0.3}) == "LR = 0.3\nLR = 0.5\nBATCH = 8\n"
    assert inject(src, {}) == src


def test_inject_handles_non_ascii_before_the_value_and_multiline_values():
    src = 'LABEL_X = "é→"; LR_X = 0.1  # ü\nSIZE_X = (\n    4 * 1024\n)\n'
    out = inject(src, {"LR_X": 0.3, "LABEL_X": "ß", "SIZE_X": 2**13})
    # Offsets are in bytes in the AST; the replacement must land on the right characters.
    assert out.split("\n", 1)[1] == 'SIZE_X = (\n    2**13\n)\n'
    assert out.split("\n", 1)[0].endswith('"; LR_X = 0.3  # ü')
    assert {a.name: a.value for a in find_assignments(out)} == {"LABEL_X": "ß", "LR_X": 0.3, "SIZE_X": 2**13}


def test_inject_unknown_name_and_bad_values():
    with pytest.raises(InjectionError, match="MISSING"):
        inject("LR = 0.1\n", {"MISSING": 1})
    with pytest.raises(InjectionError):
        inject("LR = 0.1\n", {"LR": float("nan")})
    with pytest.raises(InjectionError):
        format_value([1, 2])


def test_format_value():
    assert format_value(2**20) == "2**20"
    assert format_value(1024) == "2**10"
    assert format_value(512) == "512"  # small powers of two stay plain
    assert format_value(3000) == "3000"
    assert format_value(True) == "True"
    assert format_value(0.1) == "0.1"
    assert float(format_value(1 / 3)) == 1 / 3  # full precision
    assert format_value("SSSL") == "'SSSL'"


# -- metrics and classification -----------------------------------------------------------------
SUMMARY = """\
step 00950 (99.9%) | loss: 3.123 | lrm: 0.01
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
num_steps:        953
depth:            8
small:            1e-3
"""


def test_parse_metrics_on_summary_block():
    m = parse_metrics(SUMMARY)
    assert m == {"val_bpb": 0.9979, "training_seconds": 300.1, "total_seconds": 325.9, "peak_vram_mb": 45060.2,
                 "mfu_percent": 39.8, "num_steps": 953.0, "depth": 8.0, "small": 1e-3}
    assert "loss" not in m  # only whole `key: number` lines count


def test_parse_metrics_last_wins_nan_inf_and_carriage_returns():
    m = parse_metrics("val_bpb: 2.0\rval_bpb: 1.5\nloss: nan\nother: -inf\nneg: -0.5\nword: abc\n")
    assert m["val_bpb"] == 1.5 and math.isnan(m["loss"]) and m["other"] == -math.inf and m["neg"] == -0.5
    assert "word" not in m


@pytest.mark.parametrize(
    "rc, output, kwargs, status",
    [
        (0, "val_bpb: 1.0\n", {}, TrialStatus.OK),
        (0, "val_bpb: inf\n", {}, TrialStatus.DIVERGED),
        (0, "FAIL\nval_bpb: 1.0\n", {}, TrialStatus.DIVERGED),
        (0, "nothing\n", {}, TrialStatus.CRASH),
        (1, "val_bpb: 1.0\n", {"timed_out": True}, TrialStatus.TIMEOUT),
        (-signal.SIGKILL, "", {}, TrialStatus.OOM),
        (1, "", {"killed_by_cap": True}, TrialStatus.OOM),
        (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n", {}, TrialStatus.OOM),
        (1, "ModuleNotFoundError: No module named 'flash_attn'\n", {}, TrialStatus.INVALID),
        (1, "  File \"train.py\", line 3\nSyntaxError: invalid syntax\n", {}, TrialStatus.INVALID),
        (1, "ValueError: bad\n", {}, TrialStatus.CRASH),
        (-signal.SIGTERM, "", {}, TrialStatus.CRASH),
    ],
)
def test_classify(rc, output, kwargs, status):
    kwargs.setdefault("timed_out", False)
    assert classify(rc, output, "val_bpb", **kwargs).status is status


# -- real subprocesses --------------------------------------------------------------------------
def test_ok_runs_injected_copy_and_costs_training_seconds(tmp_path):
    t, r = run("ok", tmp_path, {"LEARNING_RATE": 0.2, "BATCH_SIZE": 64, "TOKENS": 2**21})
    assert r.status is TrialStatus.OK, r.extra.get("log_tail")
    assert r.value == pytest.approx(1.23)
    assert r.cost_s == pytest.approx(0.5) and r.wall_s > 0
    assert r.metrics["lr_seen"] == 0.2 and r.metrics["batch_seen"] == 64 and r.metrics["tokens_seen"] == 2**21
    assert r.metrics["mode_fast"] == 1  # a lone string is left as it is
    assert r.error is None and r.extra["returncode"] == 0
    log = Path(r.log_path)
    assert log.is_file() and "val_bpb:" in log.read_text() and log.parent == tmp_path / "trials" / "00000"
    copy = (log.parent / "train.py").read_text()
    assert "LEARNING_RATE = 0.2  # a comment that must survive injection" in copy
    assert "TOKENS = 2**21" in copy and "MODE = 'fast'" in copy
    assert "LEARNING_RATE = 0.1" in (CASES / "ok" / "train.py").read_text()  # the original is untouched


def test_oom_under_memory_cap(tmp_path):
    t, r = run("oom", tmp_path)
    assert t.config.runner.memory_cap_bytes == 512 * 2**20
    assert r.status is TrialStatus.OOM, r.extra.get("log_tail")
    assert "MemoryError" in (r.error or "")
    assert r.cost_s == pytest.approx(r.wall_s)  # a failure costs its wall time
    assert Path(r.log_path).is_file()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_process_group(tmp_path):
    start = time.monotonic()
    t, r = run("timeout", tmp_path)
    assert t.trial_timeout_s == 3.0
    assert r.status is TrialStatus.TIMEOUT, r.extra.get("log_tail")
    assert 3.0 <= time.monotonic() - start < 15
    assert r.wall_s >= 3.0 and r.cost_s == pytest.approx(r.wall_s)
    pid = int(r.metrics["child_pid"])
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the script's child process outlived the timeout"


@pytest.mark.parametrize("case", ["nan", "fail"])
def test_diverged(case, tmp_path):
    _, r = run(case, tmp_path)
    assert r.status is TrialStatus.DIVERGED, r.extra.get("log_tail")
    assert r.value is None


def test_invalid_reported_by_script(tmp_path):
    _, r = run("invalid", tmp_path)
    assert r.status is TrialStatus.INVALID, r.extra.get("log_tail")
    assert r.extra["returncode"] == 3
    assert "INVALID: bad batch" in (r.error or "")


def test_invalid_by_constraint_does_not_run(tmp_path):
    t = task("constraint")
    assert [c.expression for c in t.space.constraints] == ["BATCH_SIZE <= WIDTH"]
    r = t.evaluate({"BATCH_SIZE": 128, "WIDTH": 64}, trial_number=3, run_dir=tmp_path)
    assert r.status is TrialStatus.INVALID
    assert r.cost_s == 0 and r.log_path is None
    assert "BATCH_SIZE <= WIDTH" in (r.error or "")
    assert not (tmp_path / "trials").exists()
    r = t.evaluate({"BATCH_SIZE": 3, "WIDTH": 64}, trial_number=4, run_dir=tmp_path)  # not a power of two
    assert r.status is TrialStatus.INVALID and r.cost_s == 0


def test_crash(tmp_path):
    _, r = run("crash", tmp_path)
    assert r.status is TrialStatus.CRASH, r.extra.get("log_tail")
    assert r.error == "RuntimeError: shape mismatch in layer 3"
    assert r.cost_s == pytest.approx(r.wall_s)


def test_metric_missing_is_a_crash_naming_the_metric(tmp_path):
    _, r = run("nometric", tmp_path)
    assert r.status is TrialStatus.CRASH
    assert r.extra["returncode"] == 0
    assert "val_bpb" in (r.error or "")
    assert r.metrics == {"loss": 0.5}


def test_sibling_module_import_from_work_copy(tmp_path):
    _, r = run("sibling", tmp_path, {"LEARNING_RATE": 0.5})
    assert r.status is TrialStatus.OK, r.extra.get("log_tail")
    assert r.value == pytest.approx(1.0)
    assert not (tmp_path / "trials" / "00000" / "helper.py").exists()


def test_scrub_env_removes_api_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    t, r = run("env", tmp_path)
    assert t.config.runner.scrub_env
    assert r.status is TrialStatus.OK, r.extra.get("log_tail")
    assert r.metrics["has_openai_key"] == 0 and r.metrics["has_path"] == 1
    assert "sk-test" not in Path(r.log_path).read_text()


def test_without_scrub_the_environment_passes_through_but_keys_never_do(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    t = task("env")
    t.config.runner.scrub_env = False
    r = t.evaluate(t.space.defaults(), trial_number=0, run_dir=tmp_path)
    assert r.status is TrialStatus.OK and r.metrics["has_openai_key"] == 0 and r.metrics["has_path"] == 1


def test_scrubbed_environment():
    env = {"PATH": "/bin", "HOME": "/root", "OPENAI_API_KEY": "x", "HF_TOKEN": "y", "CUDA_VISIBLE_DEVICES": "0",
           "AWS_SECRET_ACCESS_KEY": "z", "CENTAUR_API_KEY": "w", "RANDOM_VAR": "v", "LC_ALL": "C"}
    assert scrubbed_environment(env) == {"PATH": "/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "LC_ALL": "C"}


def test_from_script_defaults(tmp_path):
    t = task("ok")
    assert t.name == "ok" and t.metric == "val_bpb" and t.script.is_absolute()
    assert set(t.space.names) == {"LEARNING_RATE", "BATCH_SIZE"}
    assert "token" in t.space.skipped["TOKENS"]  # a token count is never tuned by default
    assert t.trial_timeout_s == 3600.0
    assert "val_bpb" in t.describe()
    assert os.fspath(t.script).endswith("runner/ok/train.py")
