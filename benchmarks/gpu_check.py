"""The GPU path of `centaur tune`, proven on a real CUDA machine in one command (issue #17).

On a CUDA machine with no network, in under 8 minutes:
  1. install    centaur and the pure-Python dependencies the machine lacks from carried wheels, into a
                target folder (`pip install --no-index --no-deps --target`), and check what imports from where;
  2. baseline   `centaur tune gpt` (the bundled task, its own centaur.toml, at CPU scale) for a few trials on the
                GPU: the baseline trial must be `ok`, on the GPU, with `peak_vram_mb` reported;
  3. oom        a real CUDA out-of-memory: a copy of the task with `[runner] gpu_memory_fraction = 0.02` and a
                fixed configuration far past it; every trial must be classified `oom`, cost its wall time, and
                the study must go on (`--keep-going`);
  4. workers    two workers with `--gpus 0,0` on one study: each trial saw CUDA_VISIBLE_DEVICES=0 and ran on the
                GPU, both workers ran trials, and they shared one budget (overshoot at most one trial each);
  5. throughput the bundled task's tokens/s on the GPU against the CPU number in centaur/tasks/gpt/README.md.
Each phase has a timeout; the JSON summary is rewritten after every phase, so a run cut short still leaves
its results. The summary is printed at the end; phase logs are written beside it.

Without CUDA the same orchestration runs on the CPU with tiny budgets, and every step that needs CUDA is
recorded as "skipped: no CUDA": `--dry-run` asks for that (exit code 0 when it passed), and a run without
`--dry-run` on a machine without CUDA does it too, then exits with code 2 and says so.

Usage:
  python benchmarks/gpu_check.py --build-wheels build/gpu-wheels        # here, with an index: the carried folder
  python benchmarks/gpu_check.py --wheels build/gpu-wheels --out $OUT/gpu_check.json   # on the CUDA machine
  python benchmarks/gpu_check.py --dry-run [--task standin|gpt] --out gpu_check.json   # anywhere, on the CPU
See benchmarks/gpu_check.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1
NO_CUDA = "skipped: no CUDA"
DRY_RUN = "skipped: dry run"
TOKEN_ENV = "CENTAUR_GPU_CHECK_RUN"  # marks the processes this check started (workers, supervisors)
# What the carried wheel folder leaves out: the GPU machine has these (numpy is the one torch was built
# against, and scipy + scikit-learn alone are ~50 MB; `tpe`, the method used here, needs neither).
DEFAULT_EXCLUDE = ("numpy", "scipy", "scikit-learn", "joblib", "threadpoolctl", "torch", "triton")
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT = 64 * 2**20
LOG_KEEP = 2**20  # bytes of each phase log written beside the summary

# Fixed configuration of the OOM phase: 8 layers x 512 wide (25M parameters), 256 sequences of 256 bytes per
# micro-batch. On CUDA (bf16) its first step needs about 12 GB of activations; 0.02 of an 80-140 GB card is
# 1.6-2.9 GB. On a CPU (fp32) it passes the task's 2 GiB memory cap within the first layers.
OOM_FIXED = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "DEVICE_BATCH_SIZE": 256, "TOTAL_BATCH_SIZE": 2**16}
OOM_FRACTION = 0.02
# The model size of the workers phase (and of a dry run's baseline): train.py's defaults, so that every trial
# trains for the same TIME_BUDGET whatever the sampler proposes (only learning rates and schedule vary).
SIZE_FIXED = {"DEPTH": 2, "ASPECT_RATIO": 64, "HEAD_DIM": 32, "DEVICE_BATCH_SIZE": 16, "TOTAL_BATCH_SIZE": 2**12}
STANDIN_OOM_FIXED = {"WIDTH": 1024, "LAYERS": 8}  # 2 GiB allocated under a 1 GiB cap


@dataclass(frozen=True)
class Plan:
    """Budgets of one kind of run: phase timeouts (s), trial timeouts, and the task's training seconds."""

    baseline_trials: int
    phase_timeout: dict[str, float]
    trial_timeout: dict[str, str]
    workers_train_s: float  # TIME_BUDGET (or the stand-in's sleep) of the workers phase
    gpt_constants: dict[str, Any] = field(default_factory=dict)  # set in every copy of the gpt task
    baseline_fixed: bool = False  # the baseline phase's copy fixes the model size (a dry run on 2 cores)
    oom_memory_cap: str | None = None  # a dry run's OOM copy: a lower CPU cap, reached before much compute


GPU_PLAN = Plan(
    baseline_trials=2,
    phase_timeout={"install": 90, "baseline": 170, "oom": 80, "workers": 110},
    trial_timeout={"baseline": "120s", "oom": "60s", "workers": "60s"},
    workers_train_s=10,
)
DRY_GPT_PLAN = Plan(
    baseline_trials=2,
    phase_timeout={"install": 90, "baseline": 150, "oom": 120, "workers": 180},  # 2 shared cores can be slow
    trial_timeout={"baseline": "60s", "oom": "45s", "workers": "45s"},
    workers_train_s=2,
    gpt_constants={"TIME_BUDGET": 3, "EVAL_BYTES": 2**12},
    baseline_fixed=True,
    oom_memory_cap="1GiB",  # under the task's 2 GiB the first block computes for ~20 s on 2 cores before failing
)
DRY_STANDIN_PLAN = Plan(
    baseline_trials=2,
    phase_timeout={"install": 60, "baseline": 120, "oom": 120, "workers": 120},
    trial_timeout={"baseline": "30s", "oom": "30s", "workers": "30s"},
    workers_train_s=1.0,  # a trial's wall time is several seconds, so the second worker joins before it ends
)

STANDIN_SCRIPT = '''"""gpu_check's stand-in for the bundled GPT task (a dry run's orchestration checks): no torch, a
quadratic in its ALL_CAPS constants, WIDTH x LAYERS x 256 KiB of "activations" (past the memory cap,
MemoryError), and SLEEP_S seconds of "training"."""
import math
import os
import time

LEARNING_RATE = 0.01  # log-scale float
WIDTH = 64  # power of two
LAYERS = 3  # int
SLEEP_S = 0.3  # task constant: the training time

activations = bytearray(WIDTH * LAYERS * 2**18)
time.sleep(SLEEP_S)
loss = (math.log10(LEARNING_RATE) + 2.5) ** 2 + (math.log2(WIDTH) - 7) ** 2 / 10 + (LAYERS - 5) ** 2 / 20 + 1.0
print("---")
print(f"val_bpb: {loss:.6f}")
print(f"training_seconds: {SLEEP_S}")
print(f"peak_rss_mb: {len(activations) / 2**20:.1f}")
'''
STANDIN_CONFIG: dict[str, Any] = {
    "task": {"description": "gpu_check's stand-in training script (a quadratic bowl).", "metric": "val_bpb"},
    "runner": {"trial_timeout": "30s", "memory_cap": "1GiB"},
    "space": {
        "exclude": ["SLEEP_S"],
        "params": {
            "LEARNING_RATE": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "WIDTH": {"type": "pow2", "low": 16, "high": 1024},
            "LAYERS": {"type": "int", "low": 1, "high": 8},
        },
    },
}
# The line each workers-phase trial prints first (inserted into its copy of the script).
VISIBLE_LINE = "print(f\"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}\", flush=True)"
CUDA_OOM = re.compile(
    r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError: CUDA|CUDA error: out of memory|"
    r"CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)


# -- small pure helpers (unit-tested) --------------------------------------------------------------------------
def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def verdict(entry: dict[str, Any]) -> str:
    """A phase's status from what it recorded: error, timeout, failed (a check is False), skipped, or ok."""
    if entry.get("error"):
        return "error"
    checks = entry.get("checks", {})
    if entry.get("timed_out"):
        return "timeout"
    if any(v is False for v in checks.values()):
        return "failed"
    if checks and all(isinstance(v, str) for v in checks.values()):
        return next(iter(checks.values()))
    if entry.get("skipped"):
        return str(entry["skipped"])
    return "ok"


def toml_dumps(data: dict[str, Any]) -> str:
    """A TOML document of nested tables, strings, numbers, booleans and lists (what centaur.toml uses)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"not representable in centaur.toml: {v!r}")
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix and (scalars or not any(isinstance(v, dict) for v in d.values())):
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def set_constant(source: str, name: str, value: Any) -> str:
    """`source` with the module-level `NAME = ...` assignment's value replaced (its comment kept)."""
    pattern = re.compile(rf"^{re.escape(name)} = [^#\n]*?(\s*#.*)?$", re.MULTILINE)
    new, n = pattern.subn(lambda m: f"{name} = {value!r}{m.group(1) or ''}", source, count=1)
    if n != 1:
        raise ValueError(f"no module-level assignment of {name} to change")
    return new


def insert_visible_line(source: str) -> str:
    """The script with VISIBLE_LINE after its `os.environ.setdefault(...)` line (gpt) or its imports (stand-in)."""
    for anchor in ('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")\n', "import time\n"):
        if anchor in source:
            return source.replace(anchor, anchor + VISIBLE_LINE + "\n", 1)
    raise ValueError("no place found to insert the CUDA_VISIBLE_DEVICES line")


def readme_cpu_tokens_per_second(readme: str) -> float | None:
    """The CPU throughput of the default configuration in centaur/tasks/gpt/README.md's benchmark table."""
    m = re.search(r"^\|\s*default throughput\s*\|\s*([\d,.]+)\s*tokens/s", readme, re.MULTILINE)
    return float(m.group(1).replace(",", "")) if m else None


def wheel_name(path: str | Path) -> tuple[str, str]:
    """(normalized project name, version) of a wheel file name."""
    parts = Path(path).name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"not a wheel file name: {Path(path).name}")
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def wheel_fits(path: str | Path, py: tuple[int, int] | None = None, machine: str | None = None) -> bool:
    """Whether a wheel's tags suit this interpreter (CPython `py`, Linux `machine`); for the pip-less fallback."""
    py = py or sys.version_info[:2]
    machine = machine or os.uname().machine
    pytag, abitag, plattag = Path(path).name[: -len(".whl")].split("-")[-3:]
    cp = f"cp{py[0]}{py[1]}"

    def py_fits(tag: str) -> bool:
        if tag in ("py3", f"py{py[0]}{py[1]}", cp):
            return True
        # cp39-abi3: any CPython from 3.9 on
        return abitag == "abi3" and tag.startswith("cp3") and tag[3:].isdigit() and int(tag[3:]) <= py[1]

    py_ok = any(py_fits(t) for t in pytag.split("."))
    abi_ok = any(t in ("none", "abi3", cp) for t in abitag.split("."))
    plat_ok = any(t == "any" or (t.endswith(machine) and ("linux" in t)) for t in plattag.split("."))
    return py_ok and abi_ok and plat_ok


# -- processes ---------------------------------------------------------------------------------------------
@dataclass
class Ran:
    returncode: int | None
    timed_out: bool
    wall_s: float
    log: Path

    def tail(self, n: int = 3000) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode("utf-8", errors="replace")


def _kill_marked(token: str) -> list[int]:
    """SIGKILL every process whose environment carries this run's token (Linux /proc); the pids killed."""
    killed = []
    me = os.getpid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            if pid == me or f"{TOKEN_ENV}={token}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ValueError):
            continue
    return killed


def run_logged(cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path, timeout_s: float) -> Ran:
    """Run `cmd` (its own session) with stdout+stderr to `log`. On timeout: SIGTERM twice (centaur: finish, then
    abort the running trial, recorded as lost), 20 s grace, then SIGKILL to its group and to every process
    that carries this run's token."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=max(1.0, timeout_s))
            return Ran(proc.returncode, False, time.monotonic() - start, log)
        except subprocess.TimeoutExpired:
            pass
        except BaseException:
            _stop(proc, env.get(TOKEN_ENV))
            raise
        _stop(proc, env.get(TOKEN_ENV))
        out.write(f"\n[gpu_check] killed after the phase timeout of {timeout_s:.0f} s\n".encode())
    return Ran(proc.returncode, True, time.monotonic() - start, log)


def _stop(proc: subprocess.Popen, token: str | None) -> None:
    for _ in range(2):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if token:
        _kill_marked(token)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


# -- install -----------------------------------------------------------------------------------------------
def install_wheels(
    wheels: Path, target: Path, python: str, log: Path, timeout_s: float, use_pip: bool | None = None
) -> dict[str, Any]:
    """Install every project in `wheels` into `target`, offline and without dependency resolution: pip picks
    each project's wheel that suits `python` (the folder may hold wheels for several Python versions). Without
    pip, the suitable wheels are unpacked (enough for these pure-Python and manylinux wheels)."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"no wheels in {wheels} (build them with --build-wheels {wheels})")
    versions: dict[str, set[str]] = {}
    for f in files:
        name, version = wheel_name(f)
        versions.setdefault(name, set()).add(version)
    doubled = {n: sorted(v) for n, v in versions.items() if len(v) > 1}
    if doubled:
        raise ValueError(f"{wheels} holds more than one version of {doubled}; keep one of each")
    target.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={next(iter(v))}" for n, v in sorted(versions.items())]
    if use_pip is None:
        use_pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0
    info: dict[str, Any] = {"wheels_dir": str(wheels), "target": str(target), "projects": len(pins),
                            "wheel_bytes": sum(f.stat().st_size for f in files)}  # fmt: skip
    if use_pip:
        cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", "--disable-pip-version-check", "--target", str(target), "--find-links", str(wheels),
               *pins]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip settings (indexes, constraints) play no part
        ran = run_logged(cmd, env=env, cwd=target, log=log, timeout_s=timeout_s)
        info.update(method="pip", returncode=ran.returncode, pip_s=round(ran.wall_s, 1))
        if ran.timed_out or ran.returncode != 0:
            raise RuntimeError(f"pip install failed (exit {ran.returncode}): {ran.tail(1500)}")
        return info
    chosen = {}
    for f in files:
        if wheel_fits(f):
            chosen.setdefault(wheel_name(f)[0], f)
    missing = sorted(set(versions) - set(chosen))
    if missing:
        raise RuntimeError(f"no pip here, and no wheel suits Python {sys.version.split()[0]} for {missing}")
    for f in chosen.values():
        with zipfile.ZipFile(f) as z:
            z.extractall(target)
        for data in target.glob("*.data"):  # purelib/platlib of a .data folder belong at the top
            for sub in ("purelib", "platlib"):
                if (data / sub).is_dir():
                    shutil.copytree(data / sub, target, dirs_exist_ok=True)
            shutil.rmtree(data)
    info.update(method="unzip (no pip)", installed=sorted(chosen))
    return info


# -- the run -----------------------------------------------------------------------------------------------
class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = bool(args.dry_run)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="centaur-gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.out = Path(args.out).resolve() if args.out else self.work / "gpu_check.json"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.python = args.python or sys.executable
        self.target = self.work / "site"
        self.token = secrets.token_hex(8)
        self.t0 = time.monotonic()
        self.deadline_s = float(args.deadline)
        self.cuda = False
        self.skip = NO_CUDA  # what a CUDA-only check says when it cannot run
        self.task_kind = "gpt"
        self.plan = GPU_PLAN
        self.task_dir: Path | None = None  # the bundled task folder, as installed
        self.baseline_trial: dict[str, Any] | None = None
        self.summary: dict[str, Any] = {
            "check": "centaur GPU path (issue #17)",
            "schema": SCHEMA,
            "started_at": now_iso(),
            "mode": "dry-run" if self.dry else "gpu",
            "done": False,
            "ok": None,
            "deadline_s": self.deadline_s,
            "work_dir": str(self.work),
            "environment": {},
            "phases": {},
        }

    # -- bookkeeping
    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.t0)

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.summary, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.out)

    def say(self, line: str) -> None:
        print(f"[gpu_check {time.monotonic() - self.t0:6.1f}s] {line}", flush=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        if self.target.is_dir():
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.target), env.get("PYTHONPATH", "")) if p)
        env.update({
            TOKEN_ENV: self.token,
            "CENTAUR_GPT_SCALE": "cpu",  # the bundled defaults are CPU scale (GPU scale: 2048-byte context, 300 s)
            "CENTAUR_DATA_DIR": str(self.work / "data"),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "160",
            "TERM": "dumb",
        })  # fmt: skip
        env.update(extra)
        return env

    def phase(self, name: str, fn: Callable[[dict[str, Any], float], None]) -> dict[str, Any]:
        own = self.plan.phase_timeout.get(name, 60.0)
        timeout = max(5.0, min(own, self.left() - 25.0))
        entry: dict[str, Any] = {"status": "running", "timeout_s": round(timeout), "checks": {}}
        self.summary["phases"][name] = entry
        self.write()
        self.say(f"{name}: running (timeout {timeout:.0f} s)")
        start = time.monotonic()
        try:
            if self.left() < 30:
                entry["timed_out"] = True
                entry["error"] = "not started: the overall deadline was nearly spent"
            else:
                fn(entry, timeout)
        except Exception as e:  # a phase's failure is a result; the next phases still run
            entry["error"] = f"{type(e).__name__}: {e}"[:2000]
            entry["traceback"] = traceback.format_exc()[-3000:]
        entry["elapsed_s"] = round(time.monotonic() - start, 1)
        entry["status"] = verdict(entry)
        self.write()
        self.say(f"{name}: {entry['status']} in {entry['elapsed_s']} s  {json.dumps(entry.get('checks', {}))}")
        return entry

    def keep_log(self, name: str, log: Path) -> str | None:
        """Copy the end of a log beside the summary, where it comes back with it; the copy's path."""
        try:
            data = log.read_bytes()[-LOG_KEEP:]
        except OSError:
            return None
        dest = self.out.with_name(f"{self.out.stem}-{name}.log")
        dest.write_bytes(data)
        return str(dest)

    # -- the centaur under test
    def centaur(self, name: str, args: list[str], timeout_s: float, entry: dict[str, Any], **env: str) -> Ran:
        cmd = [self.python, "-m", "centaur", "tune", *args]
        entry["command"] = " ".join(cmd[1:])
        ran = run_logged(cmd, env=self.env(**env), cwd=self.work, log=self.work / f"{name}.log", timeout_s=timeout_s)
        entry.update(returncode=ran.returncode, timed_out=ran.timed_out, command_s=round(ran.wall_s, 1))
        lines = [ln for ln in ran.tail(8000).splitlines() if ln.strip()]
        study = args[args.index("--study-name") + 1] if "--study-name" in args else None
        # `centaur tune` ends with "STUDY: <stop reason>; N trials, best ..." (then the best configuration)
        entry["stop_line"] = next((ln for ln in reversed(lines) if study and ln.startswith(f"{study}:")),
                                  lines[-1] if lines else "")[:500]  # fmt: skip
        entry["log"] = self.keep_log(name, ran.log)
        return ran

    def read_study(self, storage: str, name: str) -> dict[str, Any]:
        import optuna

        from centaur.study.storage import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            raise RuntimeError(f"study {name} was never created: `centaur tune` failed first (see stop_line)") from None
        trials = []
        for t in study.get_trials(deepcopy=False):
            a = t.user_attrs
            trials.append({
                "number": t.number,
                "state": t.state.name,
                "status": a.get("status", t.state.name.lower()),
                "source": a.get("proposal_source"),
                "value": t.value,
                "cost_s": a.get("cost_s"),
                "wall_s": a.get("wall_s"),
                "span_s": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start else None,
                "started": t.datetime_start.timestamp() if t.datetime_start else None,
                "completed": t.datetime_complete.timestamp() if t.datetime_complete else None,
                "owner_pid": (a.get("owner") or {}).get("pid"),
                "error": a.get("error"),
                "log": a.get("log"),
                "metrics": a.get("metrics", {}),
                "config": a.get("config"),
            })  # fmt: skip
        return {"budget_s": study.user_attrs.get("budget_s"), "trials": trials}

    @staticmethod
    def brief(t: dict[str, Any]) -> dict[str, Any]:
        m = t.get("metrics") or {}
        keep = ("val_bpb", "training_seconds", "peak_vram_mb", "tokens_per_second", "num_params_M", "num_steps")
        out = {k: t[k] for k in ("number", "status", "source", "value", "cost_s", "wall_s", "owner_pid", "error")}
        out["metrics"] = {k: m[k] for k in keep if k in m}
        return out

    @staticmethod
    def log_of(t: dict[str, Any]) -> str:
        try:
            return Path(t["log"]).read_text(encoding="utf-8", errors="replace") if t.get("log") else ""
        except OSError:
            return ""

    # -- task copies
    def task_copy(self, name: str, *, constants: dict[str, Any] | None = None, runner: dict[str, Any] | None = None,
                  fixed: dict[str, Any] | None = None, visible: bool = False) -> Path:  # fmt: skip
        """A copy of the task folder under the work dir, changed as asked; returns its train.py."""
        dest = self.work / "tasks" / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        if self.task_kind == "gpt":
            assert self.task_dir is not None
            for f in ("train.py", "prepare.py"):
                shutil.copy2(self.task_dir / f, dest / f)
            config = tomllib.loads((self.task_dir / "centaur.toml").read_text(encoding="utf-8"))
            constants = {**self.plan.gpt_constants, **(constants or {})}
        else:
            (dest / "train.py").write_text(STANDIN_SCRIPT, encoding="utf-8")
            config = json.loads(json.dumps(STANDIN_CONFIG))
        source = (dest / "train.py").read_text(encoding="utf-8")
        for k, v in (constants or {}).items():
            source = set_constant(source, k, v)
        if visible:
            source = insert_visible_line(source)
        (dest / "train.py").write_text(source, encoding="utf-8")
        config.setdefault("runner", {}).update(runner or {})
        params = config.setdefault("space", {}).setdefault("params", {})
        for k, v in (fixed or {}).items():
            params[k] = {"fixed": v}
        (dest / "centaur.toml").write_text(toml_dumps(config), encoding="utf-8")
        return dest / "train.py"

    # -- phases
    def install(self, entry: dict[str, Any], timeout: float) -> None:
        if self.args.wheels:
            entry.update(install_wheels(Path(self.args.wheels).resolve(), self.target, self.python,
                                        self.work / "install.log", timeout))  # fmt: skip
            entry["log"] = self.keep_log("install", self.work / "install.log")
            sys.path.insert(0, str(self.target))
        else:
            entry["skipped"] = "skipped: no --wheels given; centaur and its dependencies come from this Python"
        probe = (
            "import json, sys, centaur, optuna\n"
            "from centaur.tasks.gpt import TASK_DIR\n"
            "info = {'python': sys.version.split()[0], 'centaur': centaur.__file__, 'optuna': optuna.__version__,\n"
            "        'task_dir': str(TASK_DIR)}\n"
            "try:\n"
            "    if NO_TORCH:\n"
            "        raise ImportError('not needed by the stand-in task')\n"
            "    import torch\n"
            "    info['torch'] = torch.__version__\n"
            "    info['cuda'] = bool(torch.cuda.is_available())\n"
            "    if info['cuda']:\n"
            "        p = torch.cuda.get_device_properties(0)\n"
            "        info.update(device=p.name, device_memory_gib=round(p.total_memory / 2**30, 1),\n"
            "                    device_count=torch.cuda.device_count(), cuda_version=torch.version.cuda)\n"
            "except Exception as e:\n"
            "    info['torch'] = f'not importable: {type(e).__name__}: {e}'\n"
            "    info['cuda'] = False\n"
            "print('PROBE ' + json.dumps(info))\n"
        )
        probe = f"NO_TORCH = {self.dry and self.args.task == 'standin'}\n" + probe
        ran = run_logged([self.python, "-c", probe], env=self.env(), cwd=self.work, log=self.work / "probe.log",
                         timeout_s=max(10.0, timeout))  # fmt: skip
        line = next((ln for ln in ran.tail(20000).splitlines() if ln.startswith("PROBE ")), None)
        if line is None:
            raise RuntimeError(f"centaur does not import (exit {ran.returncode}): {ran.tail(2000)}")
        info = json.loads(line[len("PROBE "):])
        self.summary["environment"].update(info, platform=sysconfig.get_platform())
        self.cuda = bool(info.get("cuda"))
        self.task_dir = Path(info["task_dir"])
        checks = entry["checks"]
        checks["centaur_imports"] = True
        if self.args.wheels:
            checks["centaur_from_target"] = Path(info["centaur"]).resolve().is_relative_to(self.target)
        if self.dry and self.args.task == "standin":
            checks["torch_imports"] = "skipped: the stand-in task needs no torch"
        else:
            checks["torch_imports"] = not str(info.get("torch", "")).startswith("not importable")

    def baseline(self, entry: dict[str, Any], timeout: float) -> None:
        name, run = "gpu-check-baseline", self.work / "runs" / "baseline"
        storage = f"sqlite:///{run / 'study.db'}"
        if self.task_kind == "gpt" and not self.plan.gpt_constants:
            script = "gpt"  # the bundled task itself, as installed, with its own centaur.toml
        else:
            fixed = SIZE_FIXED if self.task_kind == "gpt" and self.plan.baseline_fixed else None
            script = str(self.task_copy("baseline", fixed=fixed))
        entry["task"] = script
        self.centaur("baseline", [script, "--method", "tpe", "--n-trials", str(self.plan.baseline_trials),
                                  "--seed", "0", "--study-name", name, "--storage", storage, "--run-dir", str(run),
                                  "--trial-timeout", self.plan.trial_timeout["baseline"]], timeout, entry)  # fmt: skip
        trials = self.read_study(storage, name)["trials"]
        entry["trials"] = [self.brief(t) for t in trials]
        base = next((t for t in trials if t["source"] == "baseline"), None)
        checks = entry["checks"]
        checks["baseline_ok"] = base is not None and base["status"] == "ok"
        checks["all_trials_finished"] = len(trials) == self.plan.baseline_trials and all(
            t["state"] in ("COMPLETE", "FAIL") for t in trials)  # fmt: skip
        vram = (base or {}).get("metrics", {}).get("peak_vram_mb")
        entry["baseline_peak_vram_mb"] = vram
        log = self.log_of(base) if base else ""
        if self.cuda and not self.dry:
            checks["baseline_on_gpu"] = "| device cuda |" in log
            checks["peak_vram_mb_reported"] = isinstance(vram, (int, float)) and vram > 0
        else:
            checks["baseline_on_gpu"] = checks["peak_vram_mb_reported"] = self.skip
        if base and base["status"] != "ok":
            entry["baseline_log_tail"] = log[-3000:]
        self.baseline_trial = base

    def oom(self, entry: dict[str, Any], timeout: float) -> None:
        name, run = "gpu-check-oom", self.work / "runs" / "oom"
        storage = f"sqlite:///{run / 'study.db'}"
        if self.task_kind == "gpt":
            fixed, runner = OOM_FIXED, {"gpu_memory_fraction": OOM_FRACTION}
            if self.plan.oom_memory_cap:
                runner["memory_cap"] = self.plan.oom_memory_cap
        else:  # the stand-in runs out of its CPU memory cap; a fraction would only make the launcher import torch
            fixed, runner = STANDIN_OOM_FIXED, {}
        script = self.task_copy("oom", runner=runner, fixed=fixed)
        entry.update(task=str(script), runner=runner, fixed=fixed)
        self.centaur("oom", [str(script), "--method", "tpe", "--n-trials", "2", "--seed", "0", "--keep-going",
                             "--study-name", name, "--storage", storage, "--run-dir", str(run),
                             "--trial-timeout", self.plan.trial_timeout["oom"]], timeout, entry)  # fmt: skip
        trials = sorted(self.read_study(storage, name)["trials"], key=lambda t: t["number"])
        entry["trials"] = [self.brief(t) for t in trials]
        done = [t for t in trials if t["state"] in ("COMPLETE", "FAIL")]
        checks = entry["checks"]
        checks["classified_oom"] = bool(done) and all(t["status"] == "oom" for t in done)
        checks["cost_is_wall_time"] = bool(done) and all(
            t["cost_s"] is not None and t["cost_s"] == t["wall_s"] and t["cost_s"] > 0
            and (t["span_s"] is None or abs(t["span_s"] - t["cost_s"]) < 10.0) for t in done)  # fmt: skip
        checks["study_went_on"] = (
            len(done) >= 2 and done[0]["status"] == "oom" and done[1]["started"] is not None
            and done[0]["completed"] is not None and done[1]["started"] >= done[0]["completed"] - 1.0
        )  # fmt: skip
        logs = [self.log_of(t) for t in done]
        if self.cuda and not self.dry:
            checks["cuda_oom_in_log"] = bool(logs) and all(CUDA_OOM.search(x) for x in logs)
        else:
            checks["cuda_oom_in_log"] = self.skip
            entry["cpu_oom_in_log"] = bool(logs) and all(
                re.search(r"MemoryError|can't allocate memory|out of memory", x) for x in logs)  # fmt: skip
        if logs and (not checks["classified_oom"] or checks["cuda_oom_in_log"] is False):
            entry["first_log_tail"] = logs[0][-3000:] if logs else ""

    def workers(self, entry: dict[str, Any], timeout: float) -> None:
        name, run = "gpu-check-workers", self.work / "runs" / "workers"
        storage = f"journal:{run / 'study.journal'}"
        train_s = self.plan.workers_train_s
        budget = 1.5 * train_s
        constants = {"TIME_BUDGET": int(train_s) if train_s >= 1 else train_s} if self.task_kind == "gpt" else {
            "SLEEP_S": train_s}  # fmt: skip
        script = self.task_copy("workers", constants=constants, visible=True,
                                fixed=SIZE_FIXED if self.task_kind == "gpt" else None)  # fmt: skip
        entry.update(task=str(script), budget_s=budget, trial_train_s=train_s)
        args = [str(script), "--method", "tpe", "--gpus", "0,0", "--budget", f"{budget:g}s", "--seed", "0",
                "--study-name", name, "--storage", storage, "--run-dir", str(run),
                "--trial-timeout", self.plan.trial_timeout["workers"]]  # fmt: skip
        ran = self.centaur("workers", args, timeout, entry)
        study = self.read_study(storage, name)
        trials = sorted(study["trials"], key=lambda t: t["number"])
        entry["trials"] = [self.brief(t) for t in trials]
        done = [t for t in trials if t["state"] in ("COMPLETE", "FAIL")]
        worker_logs = sorted((run / name / "workers").glob("worker-*.log"))
        by_worker: dict[str, list[int]] = {}
        for wl in worker_logs:
            text = wl.read_text(encoding="utf-8", errors="replace")
            by_worker[wl.stem] = [int(n) for n in re.findall(r"^trial (\d+) started", text, re.MULTILINE)]
        entry["trials_by_worker"] = by_worker
        entry["worker_logs"] = [self.keep_log(f"workers-{wl.stem}", wl) for wl in worker_logs[:2]]
        checks = entry["checks"]
        pids = {t["owner_pid"] for t in done if t["owner_pid"] is not None}
        checks["two_workers_ran_trials"] = len(worker_logs) == 2 and all(by_worker.values()) and len(pids) == 2
        logs = [self.log_of(t) for t in done]
        checks["cuda_visible_devices_0_in_each_trial"] = bool(logs) and all(
            "CUDA_VISIBLE_DEVICES=0\n" in x for x in logs)  # fmt: skip
        if self.cuda and not self.dry:
            checks["each_trial_on_gpu"] = bool(logs) and all("| device cuda |" in x for x in logs)
        else:
            checks["each_trial_on_gpu"] = self.skip
        costs = [float(t["cost_s"] or 0.0) for t in done]
        used = sum(costs)
        entry.update(used_s=round(used, 3), study_budget_s=study["budget_s"])
        checks["all_trials_ok"] = bool(done) and all(t["status"] == "ok" for t in done)
        # One shared budget: it is spent (used >= budget) and overshot by at most one trial per worker. Budgets
        # per worker would let each worker run until its own share was spent: about twice as many trials.
        checks["shared_budget"] = (
            study["budget_s"] is not None and abs(float(study["budget_s"]) - budget) < 1e-6 and used >= budget
            and used <= budget + 2 * max(costs, default=0.0) + 1e-6 and "budget spent" in ran.tail(4000)
        )  # fmt: skip

    def throughput(self, entry: dict[str, Any], timeout: float) -> None:
        readme = (self.task_dir / "README.md") if self.task_dir else None
        cpu = readme_cpu_tokens_per_second(readme.read_text(encoding="utf-8")) if readme and readme.is_file() else None
        base = self.baseline_trial
        measured = (base or {}).get("metrics", {}).get("tokens_per_second") if base and base["status"] == "ok" else None
        entry["readme_cpu_tokens_per_second"] = cpu
        entry["config"] = (
            "the baseline trial: the default configuration at CPU scale (MAX_SEQ_LEN 256, TOTAL_BATCH_SIZE 2**12, "
            "TIME_BUDGET 40 s), as in the README's CPU row"
            if self.cuda and not self.dry else
            f"the baseline trial of a dry run ({self.task_kind}, {self.plan.gpt_constants or 'no torch'}): "
            "not comparable with the README"
        )  # fmt: skip
        checks = entry["checks"]
        checks["readme_cpu_number_found"] = cpu is not None
        if self.cuda and not self.dry:
            entry["gpu_tokens_per_second"] = measured
            entry["speedup_vs_readme_cpu"] = round(measured / cpu, 2) if measured and cpu else None
            checks["gpu_tokens_per_second_measured"] = bool(measured)
            checks["gpu_faster_than_readme_cpu"] = bool(measured and cpu and measured > cpu)
        else:
            entry["dry_run_tokens_per_second"] = measured
            checks["gpu_tokens_per_second_measured"] = checks["gpu_faster_than_readme_cpu"] = self.skip

    # -- main
    def run(self) -> int:
        self.say(f"work dir {self.work}; summary {self.out}")
        self.summary["environment"].update(python_executable=self.python, host_python=sys.version.split()[0])
        self.write()
        inst = self.phase("install", self.install)
        if inst["status"] == "error":
            return self.finish(1, "install failed: nothing else can run (see phases.install)")
        if not self.cuda or self.dry:
            self.skip = NO_CUDA if not self.cuda else DRY_RUN
            self.task_kind = self.args.task or "gpt"
            self.plan = DRY_GPT_PLAN if self.task_kind == "gpt" else DRY_STANDIN_PLAN
            self.summary["mode"] = "dry-run" if self.dry else "dry-run (no CUDA)"
        elif self.args.task not in (None, "gpt"):
            return self.finish(2, "--task standin is for dry runs; a GPU run uses the bundled gpt task")
        self.summary["task"] = self.task_kind
        for name in ("baseline", "oom", "workers", "throughput"):
            self.phase(name, getattr(self, name))
        failed = [n for n, p in self.summary["phases"].items() if p["status"] in ("failed", "error", "timeout")]
        if failed:
            return self.finish(1, f"FAILED: {', '.join(failed)} (see their checks and logs)")
        if not self.cuda and not self.dry:
            return self.finish(2, "no CUDA here (torch.cuda.is_available() is False): every GPU check was skipped "
                                  "('skipped: no CUDA'); the orchestration passed on the CPU. Run this on a CUDA "
                                  "machine (benchmarks/gpu_check.md)")  # fmt: skip
        if self.dry:
            return self.finish(0, "dry run passed: the orchestration works; the GPU checks were skipped")
        return self.finish(0, "GPU check passed")

    def finish(self, code: int, message: str) -> int:
        self.summary.update(done=True, ok=code == 0, exit_code=code, message=message)
        self.write()
        print(json.dumps(self.summary, indent=2, default=str), flush=True)
        self.say(message)
        return code


# -- building the carried wheel folder ---------------------------------------------------------------------
def _requirement_closure(root: str, py: str, exclude: set[str]) -> dict[str, str]:
    """name -> installed version for `root`'s dependencies in this environment (markers taken for Python `py`)."""
    import importlib.metadata as md

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

    def norm(n: str) -> str:
        return re.sub(r"[-_.]+", "-", n).lower()

    env = {"python_version": py, "python_full_version": f"{py}.0", "extra": ""}
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if norm(name) in seen or norm(name) in exclude:
            continue
        dist = md.distribution(name)
        seen[norm(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    seen.pop(norm(root), None)
    return seen


def build_wheels(dest: Path, *, pythons: list[str], platforms: list[str], exclude: set[str],
                 own_only: bool = False) -> int:  # fmt: skip
    """Write into `dest` a wheel of this checkout and, unless `own_only`, wheels of its dependencies at the
    versions installed here (minus `exclude`), for each CPython in `pythons`; a manifest; the total size."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    py = sys.executable
    print(f"building the wheel of {ROOT} ...", flush=True)
    subprocess.run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
                    "-w", str(dest), str(ROOT)], check=True)  # fmt: skip
    own = sorted(dest.glob("centaur_hpo-*.whl"))
    with zipfile.ZipFile(own[-1]) as z:
        names = set(z.namelist())
    for needed in ("centaur/tasks/gpt/train.py", "centaur/tasks/gpt/centaur.toml", "centaur/tasks/gpt/README.md"):
        if needed not in names:
            raise SystemExit(f"the wheel lacks {needed}: the GPU check could not run the bundled task")
    pins: dict[str, str] = {}
    if not own_only:
        excluded = {re.sub(r"[-_.]+", "-", e).lower() for e in exclude}
        for version in pythons:
            pins.update(_requirement_closure("centaur-hpo", version, excluded))
        for version in pythons:
            print(f"downloading {len(pins)} dependencies for CPython {version} ...", flush=True)
            cmd = [py, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                   "--python-version", version, "--implementation", "cp", "-d", str(dest)]  # fmt: skip
            for p in platforms:
                cmd += ["--platform", p]
            subprocess.run(cmd + [f"{n}=={v}" for n, v in sorted(pins.items())], check=True)
    files = sorted(dest.glob("*.whl"))
    total = sum(f.stat().st_size for f in files)
    manifest = {
        "built_at": now_iso(), "pythons": pythons, "platforms": platforms, "excluded": sorted(exclude),
        "dependencies": pins, "wheels": {f.name: f.stat().st_size for f in files}, "total_bytes": total,
    }  # fmt: skip
    (dest / "gpu_check_wheels.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"{len(files)} wheels, {total / 2**20:.1f} MiB in {dest}", flush=True)
    if total > CARRY_LIMIT:
        print(f"error: over the {CARRY_LIMIT // 2**20} MiB that can be carried; --exclude more", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build-wheels", metavar="DIR", help="write the carried wheel folder into DIR, then exit")
    ap.add_argument("--python-versions", default="3.12", help="CPython versions to fetch wheels for (3.12,3.11)")
    ap.add_argument("--platform", action="append", help=f"wheel platforms (default: {', '.join(DEFAULT_PLATFORMS)})")
    ap.add_argument("--exclude", action="append", default=[], help="more projects to leave out of the folder")
    ap.add_argument("--own-wheel-only", action="store_true", help="--build-wheels: only the wheel of this checkout")
    ap.add_argument("--wheels", metavar="DIR", help="install centaur and its missing dependencies from DIR first")
    ap.add_argument("--out", help="the JSON summary (default: WORK/gpu_check.json); phase logs go beside it")
    ap.add_argument("--work", help="scratch folder: target site, task copies, studies, logs (default: a new temp dir)")
    ap.add_argument("--dry-run", action="store_true", help="the orchestration on the CPU, tiny budgets")
    ap.add_argument("--task", choices=("gpt", "standin"), help="dry run: the bundled task (default) or a stand-in")
    ap.add_argument("--deadline", type=float, help="seconds for the whole run (default: 450 GPU, 600 dry run)")
    ap.add_argument("--python", help="the interpreter for centaur and its trials (default: this one)")
    args = ap.parse_args(argv)
    if args.deadline is None:
        args.deadline = 600.0 if args.dry_run else 450.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build_wheels:
        return build_wheels(
            Path(args.build_wheels).resolve(),
            pythons=[v.strip() for v in args.python_versions.split(",") if v.strip()],
            platforms=args.platform or list(DEFAULT_PLATFORMS),
            exclude=set(DEFAULT_EXCLUDE) | set(args.exclude),
            own_only=args.own_wheel_only,
        )
    check = Check(args)
    try:
        return check.run()
    except KeyboardInterrupt:
        _kill_marked(check.token)
        return check.finish(130, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
