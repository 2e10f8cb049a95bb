"""`centaur bench`: grids of real studies, rerun keeps finished ones, interrupt and resume, the surrogate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import centaur
from centaur.bench import BenchError, parse_methods, parse_seeds, run_bench
from centaur.bench.grid import COMPLETE_ATTR, SECONDS_ATTR
from centaur.methods.base import MethodError
from centaur.study.storage import open_storage

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"
TRIALS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "paper_trials_seeds01.json"


def _studies(url: str) -> dict[str, optuna.Study]:
    st = open_storage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=st)
            for s in optuna.get_all_study_summaries(st, include_best_trial=False)}


def _trials(study: optuna.Study) -> list[tuple[int, dict]]:
    return [(t.number, t.user_attrs.get("config")) for t in study.get_trials()]


def test_parse_seeds_and_methods() -> None:
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    assert parse_seeds("3") == [3] and parse_seeds("1,1,0-1") == [1, 0]
    for bad in ("a", "5-2", "1-", ""):
        with pytest.raises(BenchError):
            parse_seeds(bad)
    assert parse_methods("random, tpe,random") == ["random", "tpe"]
    with pytest.raises(MethodError, match="nosuch"):
        parse_methods("random,nosuch")
    with pytest.raises(BenchError):
        parse_methods(" , ")


def test_tasks_resolve_and_bad_input_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from centaur.bench.tasks import prepare_task
    from centaur.cli import app

    gpt = prepare_task("gpt", tmp_path)
    assert gpt.name == "gpt" and Path(gpt.script).name == "train.py" and not gpt.simulated
    assert prepare_task(str(QUAD), tmp_path).name == "quadratic"
    monkeypatch.delenv("CENTAUR_SURROGATE_TRIALS", raising=False)
    with pytest.raises(FileNotFoundError, match="surrogate:PATH"):
        prepare_task("surrogate", tmp_path)
    runner = CliRunner()
    for args, message in (
        (["--task", str(tmp_path / "nope.py")], "task script not found"),
        (["--task", str(QUAD), "--seeds", "x"], "bad seed list"),
        (["--task", str(QUAD), "--methods", "random,nosuch"], "unknown method"),
        (["--task", str(QUAD), "--budget", "soon"], "not a duration"),
        (["--task", str(QUAD), "--jobs", "0"], "--jobs must be at least 1"),
    ):
        res = runner.invoke(app, ["bench", *args, "--dir", str(tmp_path / "b")])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


@pytest.mark.slow
def test_grid_runs_each_study_once_and_a_rerun_keeps_them(tmp_path: Path) -> None:
    res = run_bench(str(QUAD), ["random", "tpe"], [0, 1], "2s", bench_dir=tmp_path, jobs=1)
    assert res.complete and len(res.ran) == 4 and res.skipped == []
    assert res.storage.startswith("journal:")
    studies = _studies(res.storage)
    assert sorted(studies) == sorted(f"quadratic-{m}-seed{s}" for m in ("random", "tpe") for s in (0, 1))
    before = {}
    for name, study in studies.items():
        attrs = study.user_attrs
        assert attrs[COMPLETE_ATTR] is True and attrs[SECONDS_ATTR] > 0 and attrs["budget_s"] == 2.0
        assert len(study.get_trials()) == 2  # 1 s counted per trial
        before[name] = _trials(study)
    again = run_bench(str(QUAD), ["random", "tpe"], [0, 1], "2s", bench_dir=tmp_path, jobs=1)
    assert again.ran == [] and len(again.skipped) == 4
    more = run_bench(str(QUAD), ["random", "tpe"], [0, 1, 2], "2s", bench_dir=tmp_path, jobs=1)
    assert [o.study_name for o in more.ran] == ["quadratic-random-seed2", "quadratic-tpe-seed2"]
    after = _studies(res.storage)
    assert len(after) == 6 and all(_trials(after[n]) == t for n, t in before.items())
    with pytest.raises(BenchError, match="budget"):
        run_bench(str(QUAD), ["random"], [0], "5s", bench_dir=tmp_path, jobs=1)


@pytest.mark.slow
def test_in_memory_study_matches_direct_and_replaces_a_partial_copy(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'bench' / 'bench.journal'}"
    partial = optuna.create_study(storage=open_storage(url), study_name="quadratic-random-seed0")
    partial.set_user_attr("task", "quadratic")
    partial.enqueue_trial({"LEARNING_RATE": 0.5})  # a copy cut short: no completion mark
    res = run_bench(str(QUAD), ["random"], [0], "3s", bench_dir=tmp_path / "bench", jobs=1, in_memory=True)
    assert res.complete and res.ran[0].store_seconds > 0
    (study,) = _studies(url).values()
    assert study.user_attrs[COMPLETE_ATTR] is True
    direct = centaur.tune(QUAD, method="random", budget="3s", seed=0, run_dir=tmp_path / "direct")
    assert _trials(study) == _trials(direct.study)  # same seed, same studies, whichever way it ran


def _bench_cmd(d: Path) -> list[str]:
    return [sys.executable, "-m", "centaur.cli_main", "bench", "--task", str(QUAD), "--methods", "random",
            "--seeds", "0-2", "--budget", "4s", "--jobs", "2", "--dir", str(d)]


def _start_bench_under_way(d: Path) -> tuple[subprocess.Popen, str]:
    """Start the CLI bench of `_bench_cmd` in its own process group; return once 3 trials have started."""
    env = {**os.environ, "QUAD_SLEEP": "0.3"}
    proc = subprocess.Popen(_bench_cmd(d), env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"journal:{d / 'bench.journal'}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (d / "bench.journal").exists() and sum(len(s.get_trials()) for s in _studies(url).values()) >= 3:
            break
    return proc, url


@pytest.mark.slow
def test_cli_parallel_interrupt_then_resume_without_duplicates(tmp_path: Path) -> None:
    d = tmp_path / "b"
    proc, url = _start_bench_under_way(d)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "run the same command again" in " ".join(out.split())
    cut = {n: _trials(s) for n, s in _studies(url).items()}
    assert 0 < len(cut) < 3 or any(not s.user_attrs.get(COMPLETE_ATTR) for s in _studies(url).values())
    res = subprocess.run(_bench_cmd(d), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    final = _studies(url)
    assert len(final) == 3
    for name, study in final.items():
        trials = study.get_trials()
        assert [t.number for t in trials] == list(range(len(trials)))  # no duplicated or missing numbers
        assert study.user_attrs[COMPLETE_ATTR] is True
        assert sum(t.user_attrs.get("cost_s", 0) for t in trials) >= 4
        assert len(trials) <= 5  # 4 one-second trials, at most one more cut by the interrupt
        if name in cut:  # resumed, not restarted
            assert _trials(study)[: len(cut[name])] == cut[name]


@pytest.mark.slow
def test_sigterm_to_the_bench_alone_stops_its_workers_too(tmp_path: Path) -> None:
    """`kill PID` (or a scheduler's cancel) reaches only the bench process: its workers must stop as well,
    after recording their running trials, instead of running on as orphans."""
    import psutil

    d = tmp_path / "b"
    proc, url = _start_bench_under_way(d)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    os.kill(proc.pid, signal.SIGTERM)  # the bench process only, not its group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "run the same command again" in " ".join(out.split())
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    # 3 studies on 2 workers: the third sat in the executor's call queue, where it cannot be cancelled;
    # it must not start once the bench is stopped
    assert len(_studies(url)) == 2
    for study in _studies(url).values():  # every trial that started was recorded
        assert all(t.state.is_finished() for t in study.get_trials())


@pytest.mark.slow
@pytest.mark.skipif(not TRIALS.is_file(), reason="the reference study's trials file is not here")
def test_surrogate_grid_in_parallel(tmp_path: Path) -> None:
    grid = (f"surrogate:{TRIALS}", ["random", "tpe"], [0, 1], "2h")
    res = run_bench(*grid, bench_dir=tmp_path, jobs=2, instrument=False)  # the record has its own tests
    assert res.complete and (tmp_path / "surrogate-model.pkl").is_file()
    studies = _studies(res.storage)
    assert len(studies) == 4
    for study in studies.values():
        trials = study.get_trials()
        assert sum(t.user_attrs["cost_s"] for t in trials) >= 2 * 3600
        ok = [t for t in trials if t.user_attrs["status"] == "ok"]
        assert ok and all(isinstance(t.user_attrs["noise_free"], float) for t in ok)
        assert 0.95 < min(t.value for t in ok) < 1.0
    r0, r1 = studies["surrogate-autoresearch-random-seed0"], studies["surrogate-autoresearch-random-seed1"]
    assert _trials(r0) != _trials(r1)
    t0 = time.perf_counter()
    again = run_bench(*grid, bench_dir=tmp_path, jobs=2, instrument=False)
    assert again.ran == [] and time.perf_counter() - t0 < 30  # the fitted model is loaded from the cache
