"""Running a benchmark grid: pending studies in parallel worker processes, finished ones kept on rerun.

Two ways to run a study (see docs/bench.md):
- direct: the worker tunes straight into the bench storage, so an interrupted study resumes trial by trial
  (real training tasks, where one trial costs minutes);
- in memory: the worker tunes on Optuna's InMemoryStorage and hands the finished study back; the parent,
  the only writer, copies it into the bench storage and marks it complete (simulated tasks, where a whole
  24 h study takes seconds and a database round trip per trial attribute would dominate).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from centaur.bench.grid import COMPLETE_ATTR, SECONDS_ATTR, BenchError, Cell, grid
from centaur.bench.tasks import TaskSpec, load_task, prepare_task
from centaur.paths import absolute_path, absolute_storage_url
from centaur.study import optuna_private as op
from centaur.study.records import STUDY_BUDGET, STUDY_TASK, StudySummary
from centaur.study.storage import open_storage
from centaur.units import parse_duration

BENCH_JOURNAL = "bench.journal"


class BenchProgress(Protocol):
    def on_plan(self, todo: list[str], done: list[str]) -> None: ...
    def on_update(self, study_name: str, used_s: float, budget_s: float, n_trials: int, best: float | None) -> None: ...
    def on_cell_end(self, outcome: CellOutcome) -> None: ...


@dataclass(frozen=True)
class CellJob:
    spec: TaskSpec
    cell: Cell
    study_name: str
    budget_s: float
    penalty: float
    storage: str | None  # None: in memory, handed back to the parent
    run_dir: str


@dataclass
class CellOutcome:
    cell: Cell
    study_name: str
    stop_reason: str
    complete: bool
    seconds: float  # wall seconds of the tuning run in the worker
    n_trials: int
    best: float | None
    store_seconds: float = 0.0  # parent: copying an in-memory study into the bench storage
    trials: list[FrozenTrial] | None = None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    storage: str
    task: str
    study_names: list[str]  # every study of the grid, finished or not
    ran: list[CellOutcome]
    skipped: list[str]  # already complete before this run
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return not self.interrupted and all(o.complete for o in self.ran)


def default_bench_storage(bench_dir: Path) -> str:
    """Optuna's journal file: storing a finished study costs ~2 ms a trial there, against ~50-90 ms in SQLite
    (one ORM transaction per trial), and several processes may write to it."""
    return f"journal:{(Path(bench_dir) / BENCH_JOURNAL).resolve()}"


def run_bench(
    task: str | None,
    methods: list[str],
    seeds: list[int],
    budget: float | str,
    *,
    bench_dir: Path | str,
    storage: str | None = None,
    jobs: int = 2,
    penalty: float = 100.0,
    in_memory: bool | None = None,
    progress: BenchProgress | None = None,
    instrument: bool = True,
    notes: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every (method, seed) study of TASK that is not complete yet in the bench storage.

    Rerunning the same command resumes: complete studies are kept, a direct study resumes where it
    stopped, and an in-memory study that was not stored whole is run again from scratch. On the surrogate
    (with `instrument`) every study carries the surrogate's resolution record as a user attribute; NOTES
    hears the steps of computing it the first time.
    """
    bench_dir = absolute_path(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    if jobs < 1:
        raise BenchError(f"--jobs must be at least 1, got {jobs}")
    budget_s = parse_duration(budget)
    if budget_s <= 0:
        raise BenchError(f"the budget must be positive, got {budget!r}")
    url = absolute_storage_url(storage) if storage else default_bench_storage(bench_dir)
    spec = prepare_task(task, bench_dir, instrument=instrument, progress=notes)
    memory = spec.simulated if in_memory is None else in_memory
    cells = grid(methods, seeds)
    names = [c.study_name(spec.name) for c in cells]
    todo, skipped = _plan(url, spec, cells, names, budget_s, memory)
    if progress:
        progress.on_plan([n for _, n in todo], skipped)
    jobs_list = [
        CellJob(spec, cell, name, budget_s, penalty, None if memory else url, str((bench_dir / "runs").resolve()))
        for cell, name in todo
    ]
    ran, interrupted = _execute(jobs_list, jobs, url, progress)
    return BenchResult(storage=url, task=spec.name, study_names=names, ran=ran, skipped=skipped,
                       interrupted=interrupted)


def _plan(url: str, spec: TaskSpec, cells: list[Cell], names: list[str], budget_s: float,
          memory: bool) -> tuple[list[tuple[Cell, str]], list[str]]:
    st = open_storage(url)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(st, include_best_trial=False)}
    todo, skipped = [], []
    for cell, name in zip(cells, names, strict=True):
        s = existing.get(name)
        if s is not None:
            attrs = s.user_attrs
            if attrs.get(STUDY_TASK) not in (None, spec.name) or attrs.get(STUDY_BUDGET) not in (None, budget_s):
                raise BenchError(
                    f"study {name!r} in {url} was run with task {attrs.get(STUDY_TASK)!r} and budget "
                    f"{attrs.get(STUDY_BUDGET)} s, not {spec.name!r} and {budget_s:g} s; "
                    "use another --dir or --storage for a different benchmark"
                )
            _check_same_model(name, url, spec, attrs)
            if attrs.get(COMPLETE_ATTR):
                skipped.append(name)
                if spec.instrument is not None and attrs.get(_instrument_attr()) != spec.instrument:
                    # a study finished before the record existed (or before the record changed): brought up to date
                    st.set_study_user_attr(st.get_study_id_from_name(name), _instrument_attr(), spec.instrument)
                continue
            if memory:  # a copy that was cut short: it is cheaper to rerun than to trust it
                optuna.delete_study(study_name=name, storage=st)
        todo.append((cell, name))
    return todo, skipped


def _check_same_model(name: str, url: str, spec: TaskSpec, attrs: dict[str, Any]) -> None:
    """A study run on another surrogate (refitted with other options or a new model format) is not comparable
    with studies on this one: neither reusing it nor resuming it is right, and deleting it is the user's call.
    A study from before models were recorded is identified by its instrument record, if it has one."""
    if spec.model_id is None:
        return
    from centaur.surrogate.instrument import MODEL_ATTR, identity_of_record

    ran_on = attrs.get(MODEL_ATTR) or identity_of_record(attrs.get(_instrument_attr()))
    if ran_on is not None and ran_on != spec.model_id:
        diff = ", ".join(f"{k} {ran_on.get(k)!r} -> {spec.model_id.get(k)!r}" for k in spec.model_id
                         if k != "fit_options" and ran_on.get(k) != spec.model_id.get(k)) or "other fit options"
        raise BenchError(f"study {name!r} in {url} was run on another surrogate model ({diff}); its results are "
                         "not comparable with this one's: use another --dir or --storage, or delete its studies")


def _instrument_attr() -> str:
    from centaur.surrogate.instrument import INSTRUMENT_ATTR  # only surrogate benches: pandas is an extra

    return INSTRUMENT_ATTR


def _execute(jobs_list: list[CellJob], n_jobs: int, url: str,
             progress: BenchProgress | None) -> tuple[list[CellOutcome], bool]:
    ran: list[CellOutcome] = []
    if not jobs_list:
        return ran, False
    storage: list[BaseStorage] = []  # opened once: a journal storage replays the whole file when opened

    def finish(outcome: CellOutcome) -> None:
        if outcome.trials is not None and outcome.complete:
            if not storage:
                storage.append(open_storage(url))
            outcome.store_seconds = _store(outcome, storage[0])
        outcome.trials = None  # the parent keeps only the summary
        ran.append(outcome)
        if progress:
            progress.on_cell_end(outcome)

    report = progress.on_update if progress else None
    if n_jobs == 1:  # in this process: simplest to debug, and no process start-up for tiny grids
        try:
            for job in jobs_list:
                outcome = run_cell(job, report)
                finish(outcome)
                if not outcome.complete:
                    return ran, True
        except KeyboardInterrupt:
            return ran, True
        return ran, False

    ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and open connections
    queue = ctx.Queue()
    stop = ctx.Event()
    interrupted = False
    init_args = (queue, stop, optuna.logging.get_verbosity())
    with _sigterm_as_interrupt(stop), ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker,
                                                          initargs=init_args) as pool:
        futures: dict[Future, CellJob] = {pool.submit(run_cell, job): job for job in jobs_list}
        pending = set(futures)
        while pending:
            try:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                _drain(queue, report)
                for fut in done:
                    if fut.cancelled():
                        continue
                    try:
                        outcome = fut.result()
                    except Exception as e:  # a bug in one study must not lose the others
                        job = futures[fut]
                        outcome = CellOutcome(job.cell, job.study_name, f"error: {type(e).__name__}: {e}", False,
                                              0.0, 0, None)
                    finish(outcome)
                    interrupted = interrupted or not outcome.complete
            except KeyboardInterrupt:
                # Workers got the signal too: each records its running trial and returns. No new study
                # starts: queued ones are cancelled, and the few the executor already handed to its call
                # queue (it cannot cancel those) see `stop` and return at once.
                stop.set()
                interrupted = True
                for fut in pending:
                    fut.cancel()
        _drain(queue, report)
    return ran, interrupted


def _drain(queue: Any, report: Callable[..., None] | None) -> None:
    import queue as queue_mod

    while True:
        try:
            msg = queue.get_nowait()
        except queue_mod.Empty:
            return
        if report:
            report(*msg)


_QUEUE: Any = None
_STOP: Any = None  # multiprocessing.Event: the bench was stopped, start no study


def _init_worker(queue: Any, stop: Any, optuna_verbosity: int) -> None:
    global _QUEUE, _STOP
    _QUEUE, _STOP = queue, stop
    optuna.logging.set_verbosity(optuna_verbosity)  # a spawned process starts at Optuna's default, not the bench's
    from centaur.llm.local import die_with_parent

    die_with_parent()  # a bench killed outright (SIGKILL) must not leave its studies running on


@contextlib.contextmanager
def _sigterm_as_interrupt(stop: Any) -> Iterator[None]:
    """SIGTERM to the bench (`kill`, a scheduler's cancel) stops it like Ctrl-C: the worker processes
    get it too, record their running trials and return, and no new study starts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()  # before the workers see the signal: none of them may pick up a new study
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Updates:
    """Progress hook of the study loop: at most a few updates a second go to the parent."""

    def __init__(self, name: str, budget_s: float, report: Callable[..., None] | None) -> None:
        self.name, self.budget_s, self.report, self.last = name, budget_s, report, 0.0

    def _send(self, s: StudySummary, force: bool = False) -> None:
        now = time.monotonic()
        if self.report is None or (not force and now - self.last < 0.3):
            return
        self.last = now
        self.report(self.name, s.used_s, self.budget_s, s.n_finished, s.best_value)

    def on_start(self, summary: StudySummary) -> None:
        self._send(summary, force=True)

    def on_trial_start(self, number: int, config: dict[str, Any]) -> None:
        pass

    def on_trial_end(self, trial: FrozenTrial, summary: StudySummary) -> None:
        self._send(summary)

    def on_stop(self, reason: str, summary: StudySummary) -> None:
        self._send(summary, force=True)


def run_cell(job: CellJob, report: Callable[..., None] | None = None) -> CellOutcome:
    """Run one study to its budget (in a worker process, or inline)."""
    from centaur.api import tune

    if _STOP is not None and _STOP.is_set():
        return CellOutcome(job.cell, job.study_name, "not started (the bench was stopped)", False, 0.0, 0, None)
    if report is None and _QUEUE is not None:
        queue = _QUEUE
        report = lambda *msg: queue.put(msg)  # noqa: E731
    task = load_task(job.spec, job.cell.seed)
    storage: Any = job.storage if job.storage is not None else optuna.storages.InMemoryStorage()
    t0 = time.perf_counter()
    result = tune(task, method=job.cell.method, budget=job.budget_s, seed=job.cell.seed, storage=storage,
                  study_name=job.study_name, run_dir=job.run_dir, penalty=job.penalty,
                  progress=_Updates(job.study_name, job.budget_s, report),
                  keep_going=True)  # a benchmark runs every study to its budget, as the protocol says
    seconds = time.perf_counter() - t0
    s = result.summary
    complete = s.used_s >= job.budget_s
    study = result.study
    if job.spec.instrument is not None:  # so that a report on any storage finds how to read the study
        study.set_user_attr(_instrument_attr(), job.spec.instrument)
    if job.spec.model_id is not None:  # so that a rerun knows which surrogate this study ran on
        from centaur.surrogate.instrument import MODEL_ATTR

        study.set_user_attr(MODEL_ATTR, job.spec.model_id)
    outcome = CellOutcome(job.cell, job.study_name, result.stop_reason, complete, seconds, s.n_finished,
                          s.best_value)
    if job.storage is None:
        outcome.trials = study.get_trials(deepcopy=False)
        outcome.user_attrs = dict(study.user_attrs)
        outcome.system_attrs = dict(op.study_system_attrs(study))
    else:  # mark in place; seconds add up over resumed runs
        study.set_user_attr(SECONDS_ATTR, float(study.user_attrs.get(SECONDS_ATTR, 0.0)) + seconds)
        if complete:
            study.set_user_attr(COMPLETE_ATTR, True)
    return outcome


def _store(outcome: CellOutcome, storage: str | BaseStorage) -> float:
    """Copy a finished in-memory study into the bench storage; the completion mark is written last."""
    t0 = time.perf_counter()
    st = open_storage(storage)
    study = optuna.create_study(storage=st, study_name=outcome.study_name, direction="minimize")
    for key, value in outcome.user_attrs.items():
        study.set_user_attr(key, value)
    for key, value in outcome.system_attrs.items():
        st.set_study_system_attr(op.study_id(study), key, value)
    study.add_trials(outcome.trials or [])
    study.set_user_attr(SECONDS_ATTR, outcome.seconds)
    study.set_user_attr(COMPLETE_ATTR, True)
    return time.perf_counter() - t0
