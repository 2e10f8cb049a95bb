"""Many workers on one study: local worker processes with GPU pinning, joining from elsewhere, and every
method's behaviour when trials run in parallel and finish out of order."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from study_checks import PAR, assert_study_sound, eval_lines
from typer.testing import CliRunner

import centaur
from centaur.cli import app
from centaur.methods.base import MethodError
from centaur.space import SearchSpace, load_space
from centaur.study.loop import open_study, run_worker
from centaur.study.storage import open_storage
from centaur.study.workers import build_sampler
from centaur.tasks.base import TrialResult, TrialStatus

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.slow
def test_local_workers_share_the_budget_one_gpu_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "evals.jsonl"
    monkeypatch.setenv("PAR_EVAL_LOG", str(log))
    monkeypatch.setenv("PAR_SLEEP", "1.0")
    r = centaur.tune(PAR, method="tpe", budget="9s", run_dir=tmp_path / "runs", gpus=["3", "5", "7"])
    trials = r.study.get_trials()
    assert r.stop_reason == "budget spent"
    # The budget check happens before a trial starts: overshoot at most one trial per worker.
    assert_study_sound(r.study, eval_lines(log), budget_s=9.0, workers=3, ok_cost_s=1.0)
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 3
    # One GPU per worker: every trial of a worker saw the same single device, each worker another one.
    gpu_by_trial = {e["trial"]: e["gpu"] for e in eval_lines(log)}
    gpu_of: dict[int, set[str]] = {}
    for t in trials:
        gpu_of.setdefault(t.user_attrs["owner"]["pid"], set()).add(gpu_by_trial[t.number])
    assert sorted(g for gs in gpu_of.values() for g in gs) == ["3", "5", "7"]
    # Ran in parallel: at the start of some trial, two others were running.
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert max(sum(a <= s < b for a, b in spans) for s, _ in spans) == 3
    assert (tmp_path / "runs" / r.study.study_name / "workers" / "worker-0.log").exists()


def test_agent_code_refuses_workers(tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="cannot run with --workers"):
        centaur.tune(PAR, method="agent-code", workers=2, run_dir=tmp_path)
    res = CliRunner().invoke(app, ["tune", str(PAR), "-m", "agent-code", "--workers", "2", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "cannot run with --workers" in res.output


def test_worker_on_unknown_study_is_a_clear_error(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'j.log'}"
    res = CliRunner().invoke(app, ["worker", "--storage", url, "--study", "nope", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no study named 'nope'" in res.output
    res = CliRunner().invoke(app, ["tune", str(PAR), "--gpus", " , ", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--gpus takes" in res.output


def _postgres_or_skip() -> None:
    pytest.importorskip("psycopg2")
    try:
        open_storage(PG_URL)
    except Exception as e:
        pytest.skip(f"PostgreSQL not reachable: {e}")


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_join_a_study_from_anywhere(tmp_path: Path) -> None:
    """The SLURM shape: a study started once, then independent `centaur worker` processes join it."""
    _postgres_or_skip()
    name = f"join-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "evals.jsonl"
    env = {**os.environ, "PAR_EVAL_LOG": str(log), "PAR_SLEEP": "0.7", "PAR_COST": "1.0"}
    first = subprocess.run(
        [sys.executable, "-m", "centaur.cli_main", "tune", str(PAR), "-m", "cmaes", "--budget", "8s", "--n-trials",
         "1", "--storage", PG_URL, "--study-name", name, "--run-dir", str(tmp_path / "a")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "centaur.cli_main", "worker", "--storage", PG_URL, "--study", name,
             "--run-dir", str(tmp_path / f"node{k}"), "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for k in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("budget spent" in o for o in outs)
    study = optuna.load_study(study_name=name, storage=open_storage(PG_URL))
    trials = study.get_trials()
    assert_study_sound(study, eval_lines(log), budget_s=8.0, workers=2, ok_cost_s=1.0)
    assert len({t.user_attrs["owner"]["pid"] for t in trials}) == 3
    assert all("catcma:generation" in t.system_attrs for t in trials)  # the method came from the study


# -- methods under parallelism: threads, one study object each, real storage ----------------------------


@dataclass
class SleepTask:
    """In-process task: sleeps a random time so trials finish out of order; value from the config."""

    space: SearchSpace
    delays: tuple[float, float] = (0.02, 0.25)
    name: str = "sleep"
    metric: str = "val_bpb"
    evaluated: list[int] = field(default_factory=list)

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        time.sleep(random.Random(trial_number).uniform(*self.delays))
        self.evaluated.append(trial_number)
        value = (config["ALPHA"] - 0.3) ** 2 + (config["DEPTH"] - 5) ** 2 / 10 + 1.0
        return TrialResult(TrialStatus.OK, value, cost_s=1.0, wall_s=0.1)

    def describe(self) -> str:
        return "Minimize a quadratic of ALPHA and DEPTH (RATE does not matter)."


def run_threads(method: str, url: str, n_workers: int, per_worker: int, tmp_path: Path,
                options: dict[str, Any] | None = None, llm: Any = None) -> tuple[optuna.Study, SleepTask]:  # fmt: skip
    task = SleepTask(load_space(PAR))
    name = f"{method}-par"
    first = build_sampler(task, method, 0, options or {}, 100.0, tmp_path, llm)
    open_study(task, method=method, seed=0, budget_s=None, storage=url, study_name=name, penalty=100.0, sampler=first)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            sampler = build_sampler(task, method, 0, options or {}, 100.0, tmp_path, llm)
            study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
            run_worker(task, study, run_dir=tmp_path / "runs", budget_s=None, n_trials=per_worker)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return optuna.load_study(study_name=name, storage=open_storage(url)), task


@pytest.mark.slow
def test_cmaes_completes_generations_with_out_of_order_workers(tmp_path: Path) -> None:
    study, task = run_threads("cmaes", f"journal:{tmp_path / 'j.log'}", 4, 9, tmp_path)
    trials = study.get_trials()
    assert len(trials) == 36 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(task.evaluated) == list(range(36))
    popsize = 7  # 4 + floor(3 ln 3) for three parameters
    gens = Counter(t.system_attrs["catcma:generation"] for t in trials)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    # Generations advanced, each told exactly popsize results; a result that came in after its own
    # generation was updated is told with the next one, never dropped or told twice.
    assert max(gens) >= 2
    opt = build_sampler(task, "cmaes", 0, {}, 100.0, tmp_path, None)._load(study)
    told = opt._centaur_told
    assert len(told) == popsize * opt.generation and told <= {t.number for t in finished}
    # Out of order: some trial finished before one with a smaller number.
    order = [t.number for t in sorted(finished, key=lambda t: t.datetime_complete)]
    assert order != sorted(order)


@pytest.mark.slow
def test_cmaes_with_more_workers_than_popsize(tmp_path: Path) -> None:
    """8 workers, popsize 4: generations overfill; every trial must still be recorded and told."""
    study, task = run_threads("cmaes", f"journal:{tmp_path / 'j.log'}", 8, 4, tmp_path, {"popsize": 4})
    trials = study.get_trials()
    assert len(trials) == 32 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(task.evaluated) == list(range(32))


@pytest.mark.slow
def test_tpe_uses_a_constant_liar_in_parallel(tmp_path: Path) -> None:
    study, task = run_threads("tpe", f"sqlite:///{tmp_path / 's.db'}", 4, 6, tmp_path,
                              {"n_startup_trials": 4})  # fmt: skip
    trials = study.get_trials()
    assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)
    sampler = build_sampler(task, "tpe", 0, {}, 100.0, tmp_path, None)
    while not isinstance(sampler, optuna.samplers.TPESampler):  # through the seeding and failure wrappers
        sampler = sampler.inner
    assert sampler._constant_liar
    keys = {tuple(sorted(t.params.items())) for t in trials}
    assert len(keys) == len(trials)  # no configuration proposed twice


@pytest.mark.slow
def test_llm_method_sees_running_trials_as_pending(tmp_path: Path) -> None:
    from fake_llm_server import FakeLLMServer

    prompts: list[str] = []
    lock = threading.Lock()
    rng = random.Random(0)

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        with lock:
            prompts.append(body["messages"][-1]["content"])
            x, y = round(rng.random(), 3), rng.randint(1, 8)
        return {"content": json.dumps({"ALPHA": x, "DEPTH": y, "RATE": 0.01})}

    with FakeLLMServer(responder=answer) as server:
        llm = {"base_url": server.base_url, "model": "fake-model", "max_retries": 0}
        study, task = run_threads("agent-hps", f"journal:{tmp_path / 'j.log'}", 3, 3, tmp_path,
                                  {"fallback": "random"}, llm)  # fmt: skip
    trials = study.get_trials()
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    assert any("Running now" in p for p in prompts), "no prompt listed the trials other workers were running"
    keys = [tuple(sorted(t.user_attrs["config"].items())) for t in trials]
    assert len(set(keys)) == len(keys)
