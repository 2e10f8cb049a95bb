"""OOM-aware search: the failure model learns the memory boundary from the study's trials, CMA-ES draws
clear of it, and Centaur vetoes an LLM proposal predicted to run out of memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from fake_llm_server import FakeLLMServer
from test_centaur import OPTIMUM, Bowl, client_for

import centaur
from centaur.methods.cmaes.feasibility import FailureModel
from centaur.methods.cmaes.sampler import CatCmaSampler
from centaur.space import Param, SearchSpace
from centaur.tasks.base import TrialResult, TrialStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)

EDGE = SearchSpace((
    Param("X", "float", 0.2, low=0.0, high=1.0),
    Param("Y", "float", 0.2, low=0.0, high=1.0),
    Param("N", "int", 2, low=1, high=8),
))


class Edge:
    """The optimum (X=0.75, Y=0.55) lies on the memory boundary X + Y = 1.3: a search that converges to it
    keeps drawing on both sides unless it learns where the boundary is."""

    name = "edge"
    space = EDGE
    metric = "loss"

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        if config["X"] + config["Y"] > 1.3:
            return TrialResult(TrialStatus.OOM, cost_s=1.0, wall_s=1.0, error="out of memory")
        value = (config["X"] - 0.75) ** 2 + (config["Y"] - 0.55) ** 2 + 0.01 * abs(config["N"] - 4)
        return TrialResult(TrialStatus.OK, value=value, cost_s=1.0, wall_s=1.0)

    def describe(self) -> str:
        return "An edge. Minimize loss."


def test_failure_model_learns_the_boundary_and_waits_for_data():
    model = FailureModel(CatCmaSampler(EDGE).features)
    rng = np.random.default_rng(0)
    configs = [{"X": float(x), "Y": float(y), "N": 3} for x, y in rng.uniform(0, 1, (120, 2))]
    statuses = ["oom" if c["X"] + c["Y"] > 1.3 else "ok" for c in configs]
    assert not model.fit(configs[:4], ["oom", "oom", "ok", "ok"]).ready  # too few of each to predict
    assert model.predicted_oom({"X": 0.9, "Y": 0.9, "N": 3}) is None
    model.fit(configs + [{"X": 0.5, "Y": 0.5, "N": 3}], [*statuses, "crash"])  # a crash says nothing of memory
    assert model.ready
    assert model.predicted_oom({"X": 0.95, "Y": 0.9, "N": 3}) is not None
    assert model.predicted_oom({"X": 0.2, "Y": 0.3, "N": 3}) is None


def oom_share(result: centaur.TuneResult) -> float:
    trials = result.study.get_trials()
    return sum(t.user_attrs["status"] == "oom" for t in trials) / len(trials)


def test_cmaes_avoids_the_oom_region_it_has_seen(tmp_path):
    runs = {avoid: centaur.tune(Edge(), method="cmaes", n_trials=90, budget=None, seed=3, run_dir=tmp_path / str(avoid),
                                storage=optuna.storages.InMemoryStorage(),
                                method_options={"popsize": 6, "avoid_oom": avoid})
            for avoid in (False, True)}
    blind, aware = oom_share(runs[False]), oom_share(runs[True])
    assert blind > 0.15  # the optimum is on the boundary: a blind search fails often
    assert aware < blind / 2
    assert runs[True].best_value < 0.01  # and still converges to the optimum on the edge


def test_llm_proposal_predicted_to_run_out_of_memory_is_vetoed(tmp_path):
    oom = {**OPTIMUM, "DEPTH": 12, "WD": 0.99}
    with FakeLLMServer(responder=lambda body: {"content": json.dumps(oom)}) as server:
        result = centaur.tune(Bowl(), method="centaur", n_trials=60, budget=None, seed=2, run_dir=tmp_path,
                              storage=f"sqlite:///{tmp_path / 's.db'}", llm=client_for(server, tmp_path),
                              method_options={"llm_ratio": 0.3, "duplicates": "allow", "trust": "fixed"})
    trials = result.study.get_trials()
    ran = [t for t in trials if t.user_attrs.get("proposal_source") == "llm"]
    vetoed = [t for t in trials if t.user_attrs.get("proposal_source") == "llm-fallback:predicted-oom"]
    assert 3 <= len(ran) <= 6  # run until the model has seen enough failures of that region ...
    assert all(t.user_attrs["status"] == "oom" for t in ran)
    assert len(vetoed) >= 8  # ... then vetoed: CMA-ES's own proposal runs instead, marked
    for t in vetoed:
        assert t.user_attrs["config"] == t.user_attrs["cma_proposal"]
        assert t.user_attrs["llm_detail"]["vetoed"]["DEPTH"] == 12 and t.user_attrs["llm_detail"]["p_oom"] >= 0.5



def test_lean_fit_is_scikit_learns_model_and_trials_are_encoded_once():
    """`Logit` makes scikit-learn's computations without its checks: the same coefficients, bit for bit
    (a CMA-ES run then draws the same trials), and `fit_trials` decodes each trial once per study."""
    from centaur.methods.cmaes.feasibility import Logit, sklearn_logistic

    rng = np.random.default_rng(4)
    for n, d in ((12, 3), (300, 20)):
        x = rng.uniform(0, 1, (n, d))
        y = (x[:, 0] + x[:, 1] + 0.3 * rng.uniform(0, 1, n) > 1.1).astype(int)
        lean, ref = Logit(x, y), sklearn_logistic(x, y)
        assert np.array_equal(lean.coef.ravel(), ref[-1].coef_.ravel())
        assert np.array_equal(lean.intercept, ref[-1].intercept_)
        q = rng.uniform(0, 1, (40, d))
        np.testing.assert_allclose(lean.p_oom(q), ref.predict_proba(q)[:, 1], rtol=0, atol=1e-12)

    decoded: list[dict[str, Any]] = []

    def decode(params: dict[str, Any]) -> dict[str, Any]:
        decoded.append(params)
        return {**params, "N": 3}

    params = [{"X": float(x), "Y": float(y)} for x, y in rng.uniform(0, 1, (60, 2))]
    statuses = ["oom" if p["X"] + p["Y"] > 1.3 else "ok" for p in params]
    model = FailureModel(CatCmaSampler(EDGE).features)
    for n in (40, 50, 60):  # a study refits as its trials come in
        model.fit_trials(params[:n], statuses[:n], decode)
    assert len(decoded) == 60 and model.ready
    same = FailureModel(CatCmaSampler(EDGE).features).fit([{**p, "N": 3} for p in params], statuses)
    probe = [{"X": 0.9, "Y": 0.5, "N": 3}, {"X": 0.2, "Y": 0.4, "N": 3}]
    assert np.array_equal(model.p_oom(probe), same.p_oom(probe))
