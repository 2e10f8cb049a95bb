"""Our CMA-ES (CatCMAwM): models every parameter type, keeps its state in the study across a resume."""

from __future__ import annotations

from pathlib import Path

import centaur
from centaur.methods.cmaes.sampler import GEN_ATTR, STATE_ATTR

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"


def test_cmaes_generations_continue_across_resume(tmp_path: Path) -> None:
    first = centaur.tune(QUAD, method="cmaes", budget="16s", run_dir=tmp_path, method_options={"popsize": 5})
    gens = [t.system_attrs.get(GEN_ATTR) for t in first.study.get_trials()]
    assert gens[0] == 0  # the baseline is told to CMA-ES too
    assert max(gens) == 3
    resumed = centaur.tune(QUAD, method="cmaes", budget="30s", run_dir=tmp_path, method_options={"popsize": 5})
    trials = resumed.study.get_trials()
    gens = [t.system_attrs.get(GEN_ATTR) for t in trials]
    assert gens[16:] and min(gens[16:]) >= 3 and max(gens) >= 5  # continued, not restarted at generation 0
    assert STATE_ATTR in resumed.study._storage.get_study_system_attrs(resumed.study._study_id)
    for t in trials:  # exact discrete values: what CMA-ES learns from is what ran
        assert t.user_attrs["config"]["WIDTH"] in (16, 32, 64, 128, 256, 512, 1024)
    assert resumed.best_value < 1.2  # the quadratic's optimum is 1.0


def test_cmaes_same_seed_same_sequence(tmp_path: Path) -> None:
    a = centaur.tune(QUAD, method="cmaes", budget="8s", run_dir=tmp_path / "a")
    b = centaur.tune(QUAD, method="cmaes", budget="8s", run_dir=tmp_path / "b")
    assert [t.user_attrs["config"] for t in a.study.get_trials()] == [
        t.user_attrs["config"] for t in b.study.get_trials()
    ]


def test_cmaes_uses_every_result_when_parallel_trials_finish_out_of_order() -> None:
    import optuna

    from centaur.methods.cmaes import library
    from centaur.methods.cmaes.sampler import CatCmaSampler
    from centaur.space import Param, SearchSpace

    space = SearchSpace((Param("X", "float", 0.5, low=0.0, high=1.0), Param("N", "int", 3, low=1, high=8)))
    sampler = CatCmaSampler(space, seed=0, popsize=4)
    study = optuna.create_study(sampler=sampler)
    running = []
    for _ in range(6):  # six workers ask before any result is in: all six are tagged generation 0
        trial = study.ask()
        space.suggest(trial)
        running.append(trial)
    for trial in reversed(running[2:]):  # trials 5, 4, 3, 2 finish first
        study.tell(trial, float(trial.number))
    nxt = study.ask()  # generation 0 is complete: CMA-ES is updated with trials 2-5
    space.suggest(nxt)
    assert study._storage.get_trial(nxt._trial_id).system_attrs[GEN_ATTR] == 1
    for trial in running[:2]:  # the stragglers finish after their generation was updated
        study.tell(trial, 0.5)
    study.tell(nxt, 1.0)
    for _ in range(2):
        t = study.ask()
        space.suggest(t)
        study.tell(t, 2.0)
    last = study.ask()  # generation 1 = the stragglers 0 and 1 plus trials 6 and 7: full, so CMA-ES moved on
    space.suggest(last)
    assert study._storage.get_trial(last._trial_id).system_attrs[GEN_ATTR] == 2
    opt = sampler._load(study)
    assert library.told(opt) == set(range(8))  # every result was told exactly once
