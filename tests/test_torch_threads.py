"""gp and hebo propose with one torch thread (methods/torch_threads.py): the same proposals as with torch's
own setting, and the process's setting is back once a proposal ends."""

from __future__ import annotations

import threading

import optuna
import pytest

from centaur.methods.base import MethodError
from centaur.methods.torch_threads import torch_threads
from centaur.samplers import create

torch = pytest.importorskip("torch")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_block_runs_with_n_threads_and_puts_the_setting_back(two_threads) -> None:
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # the outer block still runs
    assert torch.get_num_threads() == 2
    with torch_threads(0):
        assert torch.get_num_threads() == 2  # 0 leaves torch alone


def test_concurrent_blocks_restore_only_when_the_last_ends(two_threads) -> None:
    inside, release, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        with torch_threads(1):
            inside.set()
            release.wait(5)
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=other)
    t.start()
    inside.wait(5)
    with torch_threads(1):
        pass  # ends while the other thread's block runs: the setting must stay 1 for it
    release.set()
    t.join(5)
    assert seen == [1] and torch.get_num_threads() == 2


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3.0, 3.0)
    n = trial.suggest_int("n", 1, 8)
    c = trial.suggest_categorical("c", ["a", "b"])
    return (x - 1.0) ** 2 + (n - 5) ** 2 + (0.5 if c == "a" else 0.0)


def _gp_params(monkeypatch: pytest.MonkeyPatch, **options) -> tuple[list[dict], list[int]]:
    threads_seen: list[int] = []
    original = optuna.samplers.GPSampler.sample_relative

    def spy(self, study, trial, search_space):
        threads_seen.append(torch.get_num_threads())
        return original(self, study, trial, search_space)

    monkeypatch.setattr(optuna.samplers.GPSampler, "sample_relative", spy)
    study = optuna.create_study(sampler=create("gp", seed=3, n_startup_trials=4, **options))
    study.optimize(_objective, n_trials=10)
    return [t.params for t in study.trials], threads_seen


def test_gp_proposes_with_one_thread_the_same_configurations(two_threads, monkeypatch) -> None:
    one, seen_one = _gp_params(monkeypatch)
    assert seen_one and set(seen_one) == {1}
    assert torch.get_num_threads() == 2  # the program's setting, back after every proposal
    torchs, seen_torch = _gp_params(monkeypatch, threads=0)
    assert set(seen_torch) == {2}
    assert one == torchs


def test_a_negative_thread_count_is_refused_by_name() -> None:
    with pytest.raises(MethodError, match="threads must be >= 0"):
        optuna.create_study(sampler=create("gp", threads=-1)).optimize(_objective, n_trials=1)
