"""benchmarks/gpu_check.py: the prepared GPU check (issue #17), tested where there is no GPU: its dry run on
the CPU (the same orchestration, with every CUDA-only check recorded as skipped), its helpers, its offline
install from wheels, and its partial summary."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load()


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTAUR_")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# -- the dry run with the stand-in task: the whole orchestration, in well under a minute -----------------------
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    work = tmp_path_factory.mktemp("gpu_check")
    out = work / "out" / "gpu_check.json"
    proc = _run("--dry-run", "--task", "standin", "--work", str(work / "w"), "--out", str(out), timeout=420)
    return proc, json.loads(out.read_text())


def test_dry_run_passes_and_prints_its_summary(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    proc, summary = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["done"] is True and summary["ok"] is True and summary["mode"] == "dry-run"
    assert summary["task"] == "standin"
    assert list(summary["phases"]) == ["install", "baseline", "oom", "workers", "throughput"]
    printed = proc.stdout[proc.stdout.index("\n{\n") + 1:]  # the summary, after the progress lines
    assert json.loads(printed[: printed.rindex("\n}") + 2]) == summary
    for name, phase in summary["phases"].items():
        assert phase["status"] == "ok" or phase["status"].startswith("skipped: "), (name, phase)


def test_dry_run_checks_the_orchestration_and_skips_what_needs_cuda(
    dry_run: tuple[subprocess.CompletedProcess, dict],
) -> None:
    _, summary = dry_run
    phases = summary["phases"]
    skipped = "skipped: dry run" if _cuda() else "skipped: no CUDA"
    base = phases["baseline"]["checks"]
    assert base["baseline_ok"] is True and base["all_trials_finished"] is True
    assert base["peak_vram_mb_reported"] == skipped and base["baseline_on_gpu"] == skipped

    oom = phases["oom"]
    assert oom["checks"]["classified_oom"] is True
    assert oom["checks"]["cost_is_wall_time"] is True
    assert oom["checks"]["study_went_on"] is True
    assert oom["checks"]["cuda_oom_in_log"] == skipped
    assert oom["cpu_oom_in_log"] is True  # a real MemoryError under the trial's memory cap
    assert len(oom["trials"]) == 2 and all(t["cost_s"] == t["wall_s"] for t in oom["trials"])

    workers = phases["workers"]
    checks = workers["checks"]
    assert checks["two_workers_ran_trials"] is True
    assert checks["cuda_visible_devices_0_in_each_trial"] is True
    assert checks["shared_budget"] is True and checks["all_trials_ok"] is True
    assert checks["each_trial_on_gpu"] == skipped
    assert sorted(workers["trials_by_worker"]) == ["worker-0", "worker-1"]
    assert len({t["owner_pid"] for t in workers["trials"]}) == 2
    assert workers["used_s"] >= workers["budget_s"]

    thr = phases["throughput"]
    assert thr["readme_cpu_tokens_per_second"] == 22400.0
    assert thr["checks"]["gpu_faster_than_readme_cpu"] == skipped


def test_dry_run_leaves_its_logs_beside_the_summary(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, summary = dry_run
    for name in ("baseline", "oom", "workers"):
        log = Path(summary["phases"][name]["log"])
        assert log.is_file() and "centaur tune" in log.read_text()
    logs = summary["phases"]["workers"]["worker_logs"]
    assert len(logs) == 2 and all("started" in Path(p).read_text() for p in logs)
    assert len(list(Path(logs[0]).parent.iterdir())) <= 8  # what the device tool brings back from $OUT


# -- helpers -------------------------------------------------------------------------------------------------
def test_verdict() -> None:
    assert gc.verdict({"checks": {"a": True, "b": "skipped: no CUDA"}}) == "ok"
    assert gc.verdict({"checks": {"a": True, "b": False}}) == "failed"
    assert gc.verdict({"checks": {"a": True}, "timed_out": True}) == "timeout"
    assert gc.verdict({"checks": {"a": True}, "error": "boom"}) == "error"
    assert gc.verdict({"checks": {"a": "skipped: no CUDA"}}) == "skipped: no CUDA"


def test_toml_dumps_round_trips_the_bundled_config() -> None:
    config = tomllib.loads((ROOT / "centaur" / "tasks" / "gpt" / "centaur.toml").read_text())
    config["runner"]["gpu_memory_fraction"] = 0.02
    config["space"]["params"]["DEPTH"] = {"fixed": 8}
    assert tomllib.loads(gc.toml_dumps(config)) == config


def test_task_copies_keep_the_scripts_valid(tmp_path: Path) -> None:
    from centaur.space import load_space

    source = (ROOT / "centaur" / "tasks" / "gpt" / "train.py").read_text()
    changed = gc.insert_visible_line(gc.set_constant(gc.set_constant(source, "TIME_BUDGET", 10), "EVAL_BYTES", 4096))
    assert "\nTIME_BUDGET = 10  # seconds of counted training time\n" in changed
    assert "\nEVAL_BYTES = 4096  # " in changed
    compile(changed, "train.py", "exec")
    assert changed.index(gc.VISIBLE_LINE) < changed.index("\nimport torch  ")
    with pytest.raises(ValueError):
        gc.set_constant(source, "NO_SUCH_NAME", 1)
    defaults = {p.name: p.default for p in load_space(ROOT / "centaur" / "tasks" / "gpt" / "train.py")}
    assert all(defaults[k] == v for k, v in gc.SIZE_FIXED.items())  # the fixed model size is the default one
    (tmp_path / "train.py").write_text(gc.STANDIN_SCRIPT)
    (tmp_path / "centaur.toml").write_text(gc.toml_dumps(gc.STANDIN_CONFIG))
    assert [p.name for p in load_space(tmp_path / "train.py")] == ["LEARNING_RATE", "WIDTH", "LAYERS"]
    compile(gc.insert_visible_line(gc.STANDIN_SCRIPT), "train.py", "exec")


def test_readme_cpu_throughput_is_found() -> None:
    readme = (ROOT / "centaur" / "tasks" / "gpt" / "README.md").read_text()
    assert gc.readme_cpu_tokens_per_second(readme) == 22400.0
    assert gc.readme_cpu_tokens_per_second("no table") is None


def test_wheel_names_and_tags() -> None:
    assert gc.wheel_name("pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.whl") == ("pydantic-core", "2.50.5")
    assert gc.wheel_fits("optuna-5.0.0-py3-none-any.whl", (3, 12), "x86_64")
    assert gc.wheel_fits("psutil-7.2.2-cp36-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", (3, 12), "x86_64")
    assert gc.wheel_fits("rpds_py-1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", (3, 12), "x86_64")
    assert not gc.wheel_fits("rpds_py-1-cp311-cp311-manylinux_2_17_x86_64.whl", (3, 12), "x86_64")
    assert not gc.wheel_fits("rpds_py-1-cp312-cp312-manylinux_2_17_aarch64.whl", (3, 12), "x86_64")


def _tiny_wheel(folder: Path, name: str = "gpucheckprobe", version: str = "1.0") -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.parametrize("use_pip", [True, False], ids=["pip", "unzip"])
def test_install_wheels_offline_into_a_target(tmp_path: Path, use_pip: bool) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _tiny_wheel(wheels)
    target = tmp_path / "site"
    info = gc.install_wheels(wheels, target, sys.executable, tmp_path / "install.log", 120, use_pip=use_pip)
    assert info["projects"] == 1
    out = subprocess.run([sys.executable, "-c", "import gpucheckprobe; print(gpucheckprobe.VALUE)"],
                         env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)  # fmt: skip
    assert out.stdout.strip() == "42", out.stderr


def test_install_refuses_two_versions_of_one_project(tmp_path: Path) -> None:
    _tiny_wheel(tmp_path, version="1.0")
    _tiny_wheel(tmp_path, version="2.0")
    with pytest.raises(ValueError, match="more than one version"):
        gc.install_wheels(tmp_path, tmp_path / "site", sys.executable, tmp_path / "log", 60)


def test_a_phase_is_written_while_it_runs_and_its_failure_is_a_result(tmp_path: Path) -> None:
    check = gc.Check(gc.parse_args(["--dry-run", "--work", str(tmp_path), "--out", str(tmp_path / "s.json")]))
    seen = {}

    def phase(entry: dict, timeout: float) -> None:
        seen.update(json.loads((tmp_path / "s.json").read_text())["phases"]["probe"])
        entry["checks"]["fine"] = True
        raise RuntimeError("broke half-way")

    entry = check.phase("probe", phase)
    assert seen["status"] == "running"
    assert entry["status"] == "error" and "broke half-way" in entry["error"] and entry["checks"] == {"fine": True}
    assert json.loads((tmp_path / "s.json").read_text())["phases"]["probe"]["status"] == "error"


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    start = time.monotonic()
    ran = gc.run_logged([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                        env=dict(os.environ), cwd=tmp_path, log=tmp_path / "x.log", timeout_s=2)  # fmt: skip
    assert ran.timed_out and time.monotonic() - start < 30
    assert "up" in ran.tail() and "killed after the phase timeout" in ran.tail()


# -- the real bundled task on the CPU: what a run without CUDA does -----------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(_cuda(), reason="this machine has CUDA: the run would be the real GPU check")
def test_without_cuda_the_check_runs_the_bundled_task_on_the_cpu_and_exits_2(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "gpu_check.json"
    proc = _run("--work", str(tmp_path / "w"), "--out", str(out), timeout=600)
    summary = json.loads(out.read_text())
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no CUDA" in summary["message"] and summary["mode"] == "dry-run (no CUDA)" and summary["task"] == "gpt"
    phases = summary["phases"]
    assert phases["install"]["checks"]["torch_imports"] is True
    assert phases["baseline"]["checks"]["baseline_ok"] is True
    assert phases["oom"]["checks"]["classified_oom"] is True and phases["oom"]["cpu_oom_in_log"] is True
    assert phases["workers"]["checks"]["shared_budget"] is True
    assert phases["workers"]["checks"]["cuda_visible_devices_0_in_each_trial"] is True
    assert phases["throughput"]["dry_run_tokens_per_second"] > 0
    assert phases["throughput"]["checks"]["gpu_faster_than_readme_cpu"] == "skipped: no CUDA"
