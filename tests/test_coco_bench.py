"""benchmarks/coco_mixint.py: the COCO bbob-mixint instrument (issue #20 item 6), on two functions with a tiny
budget: the problem mapping, f_opt, runtimes, and the runtime ECDF (monotone, in [0, 1], and lower for a
solver that never improves than for one that does)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

pytest.importorskip("cocoex", reason="coco-experiment (cocoex) is not installed: pip install coco-experiment")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "coco_mixint.py"
BUDGET_FACTOR = 10  # 50 evaluations in dimension 5


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coco_mixint", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["coco_mixint"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


cm = _load()


@pytest.fixture(scope="module")
def problems() -> list:
    return cm.load_problems([5], [1], [1, 2])


def stuck(problem, objective, budget: int, seed: int) -> None:
    """A solver that never improves: the same corner of the box every time."""
    x = np.asarray(problem.upper)
    while not objective.done:
        objective(x)


@pytest.fixture(scope="module")
def runs(problems: list) -> list:
    registry = cm.solver_registry()
    solvers = {"cmaes": registry["cmaes"], "random": registry["random"], "stuck": stuck}
    return cm.run_benchmark(problems, solvers, BUDGET_FACTOR, base_seed=0)


def test_problem_mapping_ints_first_with_the_problems_bounds(problems: list) -> None:
    import cocoex

    assert [p.function for p in problems] == [1, 2]
    for p in problems:
        coco = cocoex.Suite("bbob-mixint", "", "dimensions: 5 instance_indices: 1").get_problem(p.id)
        dists = p.distributions()
        assert list(dists) == sorted(dists)  # our samplers order parameters by name: names keep variable order
        kinds = [type(d) for d in dists.values()]
        assert kinds == [IntDistribution] * coco.number_of_integer_variables + [FloatDistribution] * (
            5 - coco.number_of_integer_variables
        )
        assert 0 < coco.number_of_integer_variables < 5
        assert [d.low for d in dists.values()] == pytest.approx(list(coco.lower_bounds))
        assert [d.high for d in dists.values()] == pytest.approx(list(coco.upper_bounds))


def test_f_opt_is_the_minimum(problems: list, runs: list) -> None:
    # cocoex's final target is f_opt + 1e-8 and no evaluation may go below f_opt
    for p in problems:
        assert np.isfinite(p.f_opt)
        seen = [f for r in runs if r.problem == p.id for f in r.fvalues]
        assert min(seen) > p.f_opt - 1e-8
        assert min(seen) - p.f_opt < 1e6  # the same problem, not another function's optimum


def test_runtimes_are_first_hits_of_the_best_so_far() -> None:
    targets = np.array([100.0, 1.0, 1e-8])
    t = cm.runtimes([500.0, 50.0, 60.0, 0.5, 3.0], 0.0, targets)
    assert t.tolist() == [2.0, 4.0, np.inf]
    assert cm.runtimes([10.0, 5.0 + 1e-9], 5.0, targets).tolist() == [1.0, 2.0, 2.0]  # f_opt is subtracted
    assert np.isinf(cm.runtimes([], 0.0, targets)).all()


def test_every_run_spends_its_budget_or_stops_at_the_final_target(problems: list, runs: list) -> None:
    assert len(runs) == 3 * len(problems)
    for r in runs:
        assert len(r.fvalues) <= r.budget == BUDGET_FACTOR * 5
        f_opt = next(p.f_opt for p in problems if p.id == r.problem)
        if len(r.fvalues) < r.budget:
            assert r.fvalues[-1] <= f_opt + cm.FINAL_DELTA
    assert {len(r.fvalues) for r in runs if r.solver == "stuck"} == {BUDGET_FACTOR * 5}


def test_ecdf_is_monotone_in_unit_interval_and_ranks_a_stuck_solver_last(problems: list, runs: list) -> None:
    table = cm.runtime_table(runs, problems)
    budgets = np.arange(1, BUDGET_FACTOR * 5 + 1)
    curves = {}
    for solver in ("cmaes", "random", "stuck"):
        rows = np.array(list(table[(solver, 5)].values()))
        assert rows.shape == (2, len(cm.TARGETS))
        curve = cm.ecdf(rows, budgets)
        assert np.all(np.diff(curve) >= 0)
        assert np.all((curve >= 0) & (curve <= 1))
        curves[solver] = curve
    assert curves["stuck"][0] == curves["stuck"][-1]  # never improves: what it reaches, it reaches at once
    for solver in ("cmaes", "random"):
        assert curves[solver][-1] > curves["stuck"][-1]
    shares = cm.shares(table, [1, BUDGET_FACTOR])
    assert shares["random"][5][BUDGET_FACTOR] == pytest.approx(curves["random"][-1])


def test_bootstrap_difference_is_zero_against_itself_and_positive_against_stuck(problems: list, runs: list) -> None:
    table = cm.runtime_table(runs, problems)
    budget = BUDGET_FACTOR * 5
    assert cm.bootstrap_difference(table[("random", 5)], table[("random", 5)], budget) == (0.0, 0.0, 0.0)
    mean, low, high = cm.bootstrap_difference(table[("random", 5)], table[("stuck", 5)], budget)
    assert 0 < low <= mean <= high


def test_seeds_fix_the_runs(problems: list, runs: list) -> None:
    again = cm.run_benchmark(problems[:1], {"random": cm.solver_registry()["random"]}, BUDGET_FACTOR, base_seed=0)
    first = next(r for r in runs if r.solver == "random" and r.problem == problems[0].id)
    assert again[0].fvalues == first.fvalues
