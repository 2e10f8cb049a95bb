"""Our CMA-ES (CatCMAwM): models every parameter type, keeps its state in the study across a resume."""

from __future__ import annotations

from pathlib import Path

import centaur
from centaur.methods.catcma import GEN_ATTR, STATE_ATTR

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
