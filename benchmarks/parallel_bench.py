"""Throughput of parallel workers on one study, as a fraction of the ideal (N trials per second with N
workers when each trial sleeps 1 s).

Each cell: a fresh study on the reference study's 14-hyperparameter space; N worker processes (forked,
so start-up is not counted) open the storage and wait at a common start, then each runs `trials` trials
of a 1 s sleep through the real worker loop (ask, sampler, heartbeat, lost-trial check, budget summary,
durable tell). The ratio is the share of the workers' time spent in the trials' own 1 s: trials run
divided by the sum of the workers' wall seconds, each from its own start to its last completion.

`--start staggered` (default) starts worker k at k/N s: workers of a real study are spread over a
trial's length, since trials differ in duration. `--start together` starts all at once and keeps them in
step (every trial lasts exactly 1 s), so all N ask the storage at the same moment: the worst case.

Usage: python benchmarks/parallel_bench.py [--workers 1,2,4,8,16] [--storages sqlite,journal,postgresql]
       [--methods tpe,cmaes] [--trials 4] [--start staggered|together]
       [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil

from centaur.space import SearchSpace, reference_space
from centaur.study.loop import open_study, run_worker
from centaur.study.storage import open_storage
from centaur.study.workers import build_sampler
from centaur.tasks.base import TrialResult, TrialStatus

optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclass
class SleepTask:
    space: SearchSpace
    sleep_s: float = 1.0
    name: str = "sleep"
    metric: str = "val_bpb"

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        time.sleep(self.sleep_s)
        return TrialResult(TrialStatus.OK, 1.0 + random.Random(trial_number).random(), cost_s=self.sleep_s)

    def describe(self) -> str:
        return "sleep"


def _worker(url: str, name: str, method: str, trials: int, run_dir: str, delay: float, ready: Any, go: Any,
            out: Any) -> None:  # fmt: skip
    task = SleepTask(reference_space())
    sampler = build_sampler(task, method, 0, {}, 100.0, Path(run_dir), None)
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
    ready.release()
    go.wait()
    time.sleep(delay)
    start, wall = time.process_time(), time.time()
    run_worker(task, study, run_dir=Path(run_dir), budget_s=None, n_trials=trials)
    out.put((time.process_time() - start, time.time() - wall))  # CPU and wall for its trials, start-up excluded


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every process: workers, database server, others)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def cell(
    url: str, method: str, n: int, trials: int, tmp: Path, staggered: bool
) -> tuple[float, int, int, float, float]:
    """(the workers' wall seconds summed, trials completed, workers crashed, worker CPU seconds per trial
    with start-up excluded, machine CPU seconds per trial: workers plus the database server plus whatever
    else ran)."""
    name = f"bench-{method}-{n}-{uuid.uuid4().hex[:6]}"
    task = SleepTask(reference_space())
    open_study(task, method=method, seed=0, budget_s=None, storage=url, study_name=name, penalty=100.0)
    ctx = mp.get_context("fork")
    ready, go, out_q = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, name, method, trials, str(tmp / name), k / n if staggered else 0.0,
                                               ready, go, out_q))
             for k in range(n)]  # fmt: skip
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    busy0 = _busy_s()
    go.set()
    for p in procs:
        p.join()
    busy = _busy_s() - busy0
    crashed = sum(p.exitcode != 0 for p in procs)
    results = [out_q.get() for _ in range(n - crashed)]
    cpu, wall = sum(c for c, _ in results), sum(w for _, w in results)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return wall, len(done), crashed, cpu / max(1, len(done)), busy / max(1, len(done))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--storages", default="sqlite,journal,postgresql")
    ap.add_argument("--methods", default="tpe,cmaes")
    ap.add_argument("--trials", type=int, default=4, help="trials per worker")
    ap.add_argument("--start", choices=("staggered", "together"), default="staggered")
    ap.add_argument("--pg", default=os.environ.get("CENTAUR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    ns = [int(x) for x in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="centaur-parbench-"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; each trial sleeps 1 s; "
          f"{args.trials} trials per worker; workers start {args.start}")
    print(f"{'storage':11} {'method':6} " + " ".join(f"{'N=' + str(n):>16}" for n in ns))
    for storage in args.storages.split(","):
        for method in args.methods.split(","):
            row, cpus, machine = [], [], []
            for n in ns:
                if storage == "sqlite":
                    url = f"sqlite:///{tmp / f'{method}-{n}.db'}"
                elif storage == "journal":
                    url = f"journal:{tmp / f'{method}-{n}.log'}"
                else:
                    url = args.pg
                wall, done, crashed, cpu, busy = cell(url, method, n, args.trials, tmp, args.start == "staggered")
                cpus.append(cpu)
                machine.append(busy)
                share = done / wall  # of the workers' time, the share spent in the trials' 1 s sleeps
                rate = share * n
                row.append(f"{rate:5.2f}/s ({share:4.2f})" + (f" {crashed}x!" if crashed else ""))
            print(f"{storage:11} {method:6} " + " ".join(f"{c:>16}" for c in row), flush=True)
            print(f"{'':11} {'cpu/tr':6} " + " ".join(f"{c * 1000:>14.0f}ms" for c in cpus), flush=True)
            print(f"{'':11} {'all/tr':6} " + " ".join(f"{c * 1000:>14.0f}ms" for c in machine), flush=True)
    print("cells: trials per second (ratio to the ideal N per second: the share of the workers' time spent in "
          "trials); 'Kx!': K workers crashed (see stderr)")
    print("cpu/tr: worker CPU per trial; all/tr: machine CPU per trial (workers + database server + others).")
    print(f"N workers at 1 trial/s need about N x all/tr CPU seconds per second: this machine has {os.cpu_count()}.")


if __name__ == "__main__":
    main()
