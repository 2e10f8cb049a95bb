"""Centaur: the LLM-turn schedule, what CMA-ES learns from LLM points (across a resume), duplicate
handling, the failed-proposal policy, the fallback and the prompt's size. The LLM is the scripted
fake OpenAI-compatible server; a real-model run is in test_llm_real.py."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from fake_llm_server import FakeLLMServer

import centaur
from centaur.llm import LLMClient, LLMSettings
from centaur.methods.base import MethodContext, create_sampler
from centaur.methods.centaur.schedule import LLMSchedule
from centaur.methods.cmaes.sampler import EXTERNAL_ATTR, GEN_ATTR, STATE_ATTR, CatCmaSampler
from centaur.space import Param, SearchSpace, reference_space
from centaur.tasks.base import TrialResult, TrialStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = SearchSpace((
    Param("LR", "float", 0.01, low=1e-4, high=1.0, log=True),
    Param("WD", "float", 0.5, low=0.0, high=1.0),
    Param("MOM", "float", 0.5, low=0.0, high=1.0),
    Param("DEPTH", "int", 6, low=1, high=12),
    Param("ACT", "categorical", "relu", choices=("relu", "gelu", "silu")),
))
OPTIMUM = {"LR": 0.3, "WD": 0.92, "MOM": 0.08, "DEPTH": 11, "ACT": "silu"}


class Bowl:
    """A cheap task with a known optimum far from CMA-ES's starting point (the centre of the box);
    configurations with DEPTH 12 and WD > 0.95 run out of memory."""

    name = "bowl"
    space = SPACE
    metric = "loss"

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        if config["DEPTH"] == 12 and config["WD"] > 0.95:
            return TrialResult(TrialStatus.OOM, cost_s=1.0, wall_s=1.0, error="out of memory")
        value = distance(config) + (0.0 if config["ACT"] == "silu" else 0.05)
        return TrialResult(TrialStatus.OK, value=value, cost_s=1.0, wall_s=1.0)

    def describe(self) -> str:
        return "A test bowl. Minimize loss."


def unit_point(config: dict[str, Any]) -> np.ndarray:
    return np.array([CatCmaSampler.unit(SPACE[p], config[p]) for p in ("LR", "WD", "MOM", "DEPTH")])


def distance(config: dict[str, Any]) -> float:
    return float(np.linalg.norm(unit_point(config) - unit_point(OPTIMUM)))


def near_optimum(body: dict[str, Any], counter: list[int]) -> dict[str, Any]:
    counter.append(1)
    jitter = 0.002 * len(counter)  # distinct points, all near the optimum
    return {"content": json.dumps({**OPTIMUM, "WD": round(0.9 - jitter, 4), "MOM": round(0.1 + jitter, 4)})}


def client_for(server: FakeLLMServer, tmp_path: Path) -> LLMClient:
    settings = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, timeout_s=5.0)
    return LLMClient(settings, log_path=tmp_path / "llm_calls.jsonl")


def cma_mean_distance(study: optuna.Study) -> tuple[float, int]:
    opt = pickle.loads(bytes.fromhex(study._storage.get_study_system_attrs(study._study_id)[STATE_ATTR]))
    return float(np.linalg.norm(np.clip(opt._mean, 0, 1) - unit_point(OPTIMUM))), opt.generation


# -- schedule -------------------------------------------------------------------------------------
def test_schedule_share_is_exact_not_every_third():
    s = LLMSchedule(0.3, 10)
    turns = [n for n in range(100) if s.is_llm_turn(n)]
    assert 26 <= len(turns) <= 28 and len(turns) == 27
    assert min(turns) >= 10
    assert turns != list(range(12, 100, 3))  # the reference's every-third pattern (30 turns)
    for start in range(10, 80):  # evenly spread: any window of 20 trials holds 6 turns
        assert sum(s.is_llm_turn(n) for n in range(start, start + 20)) == 6
    assert [n for n in range(30) if LLMSchedule(trials=[3, 7]).is_llm_turn(n)] == [3, 7]
    assert not any(LLMSchedule(0.0, 0).is_llm_turn(n) for n in range(50))
    with pytest.raises(ValueError):
        LLMSchedule(1.5)


# -- CMA-ES learns from the LLM's points, across a resume -------------------------------------------
def test_cma_mean_moves_towards_points_only_the_llm_proposed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    counter: list[int] = []
    with FakeLLMServer(responder=lambda body: near_optimum(body, counter)) as server:
        client = client_for(server, tmp_path)
        opts = {"llm_ratio": 0.3, "llm_warmup": 10, "trust": "fixed"}  # the fixed schedule's exact count
        first = centaur.tune(Bowl(), method="centaur", n_trials=30, budget=None, storage=storage, seed=1,
                             run_dir=tmp_path, llm=client, method_options=opts)
        mid_distance, mid_gen = cma_mean_distance(first.study)
        # Resume: a new process would build a new sampler; the state comes from the study.
        resumed = centaur.tune(Bowl(), method="centaur", n_trials=30, budget=None, storage=storage, seed=1,
                               run_dir=tmp_path, llm=client, method_options=opts)
    trials = resumed.study.get_trials()
    assert len(trials) == 60
    sources = [t.user_attrs.get("proposal_source") for t in trials]
    llm_trials = [t for t in trials if t.user_attrs.get("proposal_source") == "llm"]
    assert len(llm_trials) == sum(LLMSchedule(0.3, 10).is_llm_turn(n) for n in range(60)) == 15
    assert sources[0] == "baseline" and sources.count("cmaes") == 60 - 1 - 15
    for t in llm_trials:  # what the LLM proposed is what ran and what CMA-ES is told
        assert t.user_attrs["config"]["DEPTH"] == 11 and t.system_attrs.get(EXTERNAL_ATTR)
        assert GEN_ATTR in t.system_attrs and t.user_attrs["cma_proposal"] != t.user_attrs["config"]
    end_distance, end_gen = cma_mean_distance(resumed.study)
    assert end_gen > mid_gen >= 2  # the generations continued across the resume
    start_distance = float(np.linalg.norm(np.full(4, 0.5) - unit_point(OPTIMUM)))
    # Only LLM trials were near the optimum; CMA-ES's own search from the centre moves slower.
    alone = centaur.tune(Bowl(), method="cmaes", n_trials=60, budget=None, seed=1,
                         storage=f"sqlite:///{tmp_path / 'alone.db'}", run_dir=tmp_path)
    alone_distance, _ = cma_mean_distance(alone.study)
    assert mid_distance < 0.5 * start_distance and end_distance < 0.5 * start_distance
    assert end_distance < 0.6 * alone_distance, (end_distance, alone_distance)


# -- duplicates, failures, fallback ---------------------------------------------------------------
def make_sampler(server: FakeLLMServer, tmp_path: Path, **options: Any):
    ctx = MethodContext(space=SPACE, seed=0, options={"llm_warmup": 0, "llm_ratio": 1.0, "trust": "fixed", **options},
                        task_description="test", llm=client_for(server, tmp_path), run_dir=tmp_path)
    return create_sampler("centaur", ctx)


def ask(study: optuna.Study) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    SPACE.suggest(trial)
    return study._storage.get_trial(trial._trial_id)


def test_duplicate_is_asked_again_once_then_perturbed(tmp_path):
    same = {"content": json.dumps(OPTIMUM)}
    with FakeLLMServer(responder=lambda body: same) as server:
        study = optuna.create_study(sampler=make_sampler(server, tmp_path))
        first = ask(study)
        study.tell(first.number, 0.5)
        calls_before = len(server.chat_requests())
        second = ask(study)
        calls = len(server.chat_requests()) - calls_before
    assert SPACE.decode(first.params) == {**OPTIMUM, "LR": pytest.approx(0.3)}
    assert calls == 2  # the duplicate was answered with the reason and asked again once
    assert second.user_attrs["llm_detail"]["duplicate_of"] == 0 and second.user_attrs["llm_detail"]["perturbed"]
    assert SPACE.key_of(SPACE.decode(second.params)) != SPACE.key_of(SPACE.decode(first.params))
    assert second.user_attrs["proposal_source"] == "llm"
    assert any("perturbed" in r for r in second.user_attrs["llm_repairs"])


def test_unusable_answer_falls_back_to_cma_proposal_marked(tmp_path):
    with FakeLLMServer(responder=lambda body: {"content": "I think a learning rate of 3e-4 is good."}) as server:
        study = optuna.create_study(sampler=make_sampler(server, tmp_path))
        t = ask(study)
    assert t.user_attrs["proposal_source"] == "llm-fallback:cmaes"
    assert SPACE.decode(t.params) == t.user_attrs["cma_proposal"]
    assert not t.system_attrs.get(EXTERNAL_ATTR)  # CMA-ES's own sample, told as such


def test_unreachable_llm_stops_after_repeated_failures(tmp_path):
    with FakeLLMServer() as server:
        sampler = make_sampler(server, tmp_path, max_unavailable_in_row=2)
    study = optuna.create_study(sampler=sampler)  # the server is gone now
    assert ask(study).user_attrs["proposal_source"] == "llm-fallback:cmaes"
    with pytest.raises(centaur.llm.LLMUnavailable, match="silently becoming CMA-ES"):
        ask(study)


def _generation(values: list[float], statuses: list[str], external: list[bool]) -> list[optuna.trial.FrozenTrial]:
    return [
        optuna.trial.create_trial(params=SPACE.encode(OPTIMUM), distributions=SPACE.distributions(), value=v,
                                  user_attrs={"status": s}, system_attrs={GEN_ATTR: 0, EXTERNAL_ATTR: e})
        for v, s, e in zip(values, statuses, external, strict=True)
    ]


def test_failed_llm_point_policy():
    members = _generation([1.0, 3.0, 100.0, 2.0, 100.0], ["ok", "ok", "oom", "ok", "oom"],
                          [False, False, True, True, False])
    worst = CatCmaSampler(SPACE, external_failures="worst")._values(members)
    assert worst[:2] == [1.0, 3.0] and worst[3] == 2.0
    for i in (2, 4):  # failures, the LLM's and CMA-ES's own, rank just behind the worst success
        assert worst[i] == pytest.approx(3.0, abs=1e-6) and worst[i] > 3.0
    penalty = CatCmaSampler(SPACE, external_failures="penalty")._values(members)
    assert penalty[2] == 100.0 and penalty[4] < 3.1
    study = optuna.create_study()
    for t in members:
        study.add_trial(t)
    skipper = CatCmaSampler(SPACE, external_failures="skip")
    skip = skipper._members(study, skipper.new_optimizer())
    assert [t.number for t in skip] == [0, 1, 3, 4]  # the failed LLM point is not told at all


def test_failed_llm_points_do_not_drag_cma_into_the_oom_region(tmp_path):
    oom = {**OPTIMUM, "DEPTH": 12, "WD": 0.99}
    with FakeLLMServer(responder=lambda body: {"content": json.dumps(oom)}) as server:
        client = client_for(server, tmp_path)
        result = centaur.tune(Bowl(), method="centaur", n_trials=60, budget=None, seed=2, run_dir=tmp_path,
                              storage=f"sqlite:///{tmp_path / 's.db'}", llm=client,
                              method_options={"llm_ratio": 0.3, "duplicates": "allow", "avoid_oom": False})
    trials = result.study.get_trials()
    llm = [t for t in trials if t.user_attrs.get("proposal_source") == "llm"]
    own = [t for t in trials if t.user_attrs.get("proposal_source") == "cmaes"]
    assert llm and all(t.user_attrs["status"] == "oom" for t in llm)
    assert sum(t.user_attrs["status"] == "oom" for t in own) <= 2  # CMA-ES's own samples stay feasible


# -- prompt size at trial 300 ------------------------------------------------------------------------
def test_prompt_for_14_parameters_at_trial_300_fits_its_budget(tmp_path):
    space = reference_space()
    rng = np.random.default_rng(0)
    study = optuna.create_study()
    sampler_trials = optuna.samplers.RandomSampler(seed=0)
    for i in range(300):
        trial = optuna.trial.create_trial(
            params={p.key: sampler_trials.sample_independent(study, None, p.key, p.distribution) for p in space},  # type: ignore[arg-type]
            distributions=space.distributions(), value=100.0 if i % 4 == 0 else float(0.97 + rng.random() * 0.03),
            user_attrs={"status": "oom" if i % 4 == 0 else "ok"}, system_attrs={GEN_ATTR: i // 11},
        )  # tagged as CMA-ES's generations of 11, as the sampler does
        study.add_trial(trial)
    with FakeLLMServer() as server:
        settings = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, context_tokens=8192)
        ctx = MethodContext(space=space, seed=0, task_description="Train a GPT; minimize val_bpb.",
                            llm=LLMClient(settings), options={"metric": "val_bpb", "prompt": "full"})
        sampler = create_sampler("centaur", ctx)
        study.sampler = sampler
        trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)
        own, handle = sampler.cma.propose(study, frozen)
        history = centaur.methods.llm.common.read_history(study, space, exclude=trial.number)
        prompt = sampler.prompt(study, history, own, handle)
        # The next turn, three trials later: its prompt repeats this one up to the end of the table.
        later = centaur.methods.llm.common.History(history.finished + [history.finished[-1]] * 0, [])
        for i in range(3):
            o = history.finished[i]
            later.finished.append(type(o)(300 + i, o.config, o.status, o.value))
        next_prompt = sampler.prompt(study, later, own, handle)
    tokens = sampler.client.counter.count_messages([{"content": prompt}])
    print(f"centaur prompt at trial 300, 14 parameters: {len(prompt)} chars, ~{tokens} tokens "
          f"(budget {settings.prompt_budget})")
    assert tokens <= settings.prompt_budget
    assert "centre of the search" in prompt and "WINDOW_PATTERN probabilities" in prompt
    assert "ran out of memory" in prompt
    tail = prompt.index("## CMA-ES's own proposal")
    assert prompt.index("## What to do") < prompt.index("## CMA-ES advisor") < prompt.index("## Evaluations") < tail
    assert len(prompt) - tail < 0.25 * len(prompt)  # what changes every turn is a short tail
    table = prompt[prompt.index("## Evaluations") : prompt.index("## CMA-ES's own proposal")]
    numbers = [int(line.split(" | ")[0]) for line in table.splitlines()[2:] if " | " in line]
    assert numbers == list(range(280, 300))  # the window starts at a multiple of 10
    shared = len(os.path.commonprefix([prompt, next_prompt]))
    assert shared >= prompt.index("## CMA-ES's own proposal") - 2  # all but the newline before the tail
    print(f"the next turn shares {shared / len(prompt):.0%} of this prompt")
    # The best 5: a row in the table is pointed at by number; one outside it is shown in full.
    best = sorted(history.successes, key=history.score)[:5]
    section = prompt[prompt.index("## Best 5 so far") : prompt.index("## Failures")]
    for o in best:
        assert (f"{o.number} ({o.value:.4g})" in section) == (o.number in numbers)
        assert (sampler.table_row(o) in section) == (o.number not in numbers)
    moved = centaur.methods.llm.common.History(
        [*history.finished[:290], type(best[0])(290, best[0].config, "ok", best[0].value - 0.01),
         *history.finished[291:]], [])  # fmt: skip
    section = sampler.prompt(study, moved, own, handle).split("## Best 5 so far")[1].split("## Failures")[0]
    assert f"Trials 290 ({best[0].value - 0.01:.4g}): rows in the table above." in section
    assert str(best[0].number) + " | " in section  # the old best, outside the window, in full


def test_history_window_moves_in_whole_blocks():
    from centaur.methods.centaur.sampler import block_start

    assert [block_start(n, 20) for n in (0, 5, 19, 20, 29, 30, 39, 40, 41, 50)] == [0, 0, 0, 0, 0, 10, 10, 20, 20, 30]
    assert all(20 <= n - block_start(n, 20) <= 29 for n in range(20, 400))
    assert len({block_start(n, 20) for n in range(100, 110)}) == 1  # steady for 10 rows at a time
    assert block_start(7, 0) == 0


# -- the command line ------------------------------------------------------------------------------
QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"


@pytest.mark.slow
def test_cli_tune_centaur_with_ablation_switches(tmp_path):
    from typer.testing import CliRunner

    from centaur.cli import app

    answer = {"content": json.dumps({"LEARNING_RATE": 0.003, "WIDTH": 128, "LAYERS": 5})}
    with FakeLLMServer(responder=lambda body: answer) as server:
        args = ["tune", str(QUAD), "-m", "centaur", "--n-trials", "8", "--budget", "1h", "--run-dir", str(tmp_path),
                "--llm-ratio", "0.5", "--llm-warmup", "3", "--no-cma-state", "-o", "trust=fixed"]
        res = CliRunner().invoke(app, args, env={"CENTAUR_LLM_BASE_URL": server.base_url,
                                                 "CENTAUR_LLM_MODEL": "fake-model", "COLUMNS": "200"})
        prompts = [r["body"]["messages"][-1]["content"] for r in server.chat_requests()]
    assert res.exit_code == 0, res.output
    study = optuna.load_study(study_name="quadratic-centaur-seed0", storage=f"sqlite:///{tmp_path / 'study.db'}")
    sources = [t.user_attrs.get("proposal_source") for t in study.trials]
    assert sources[:3] == ["baseline", "cmaes", "cmaes"]
    assert sources.count("llm") == 2  # trials 3..7 at ratio 0.5 (the second is a duplicate, perturbed)
    assert prompts and all("CMA-ES advisor" not in p for p in prompts)  # --no-cma-state
    assert study.best_value < 1.5
    bad = CliRunner().invoke(app, ["tune", str(QUAD), "-m", "tpe", "--llm-ratio", "0.5", "--run-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "only for --method centaur" in bad.output


def test_failures_rank_by_distance_to_configurations_that_ran():
    """A generation that failed entirely still tells CMA-ES where to go: towards what ran."""
    rng = np.random.default_rng(1)
    members = [
        optuna.trial.create_trial(params=SPACE.encode({**OPTIMUM, "WD": float(rng.uniform(0, 1))}),
                                  distributions=SPACE.distributions(), value=100.0,
                                  user_attrs={"status": "oom"}, system_attrs={GEN_ATTR: 0})
        for _ in range(4)
    ]
    sampler = CatCmaSampler(SPACE)
    points = [sampler.coords(SPACE.decode(t.params)) for t in members]
    feasible = [points[2] + 0.01]  # something that ran, right next to member 2
    values = sampler._values(members, feasible)
    assert min(range(4), key=values.__getitem__) == 2
    distances = [float(np.linalg.norm(p - feasible[0])) for p in points]
    assert sorted(range(4), key=values.__getitem__) == sorted(range(4), key=distances.__getitem__)
    assert all(v == pytest.approx(100.0, abs=1e-3) for v in values)  # still a failure's value
