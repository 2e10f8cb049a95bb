"""LLM samplers on in-memory Optuna studies, driven by the scripted fake OpenAI-compatible server."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import optuna
import pytest
from fake_llm_server import FakeLLMServer

from centaur.llm import LLMBadAnswer, LLMClient, LLMSettings, LLMUnavailable, TokenCounter
from centaur.methods.base import MethodContext, available_methods, create_sampler
from centaur.space import Param, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
TASK = "Train a tiny GPT on one GPU with a 12 GiB memory cap. Objective: minimize val_bpb."


def space() -> SearchSpace:
    return SearchSpace((
        Param("LR", "float", 0.01, low=1e-4, high=0.1, log=True),
        Param("DEPTH", "int", 4, low=2, high=12),
        Param("HEAD_DIM", "pow2", 64, low=16, high=256),
        Param("ACT", "categorical", "relu", choices=("relu", "gelu")),
    ))


SPACE = space()


def cfg(lr: float = 0.01, depth: int = 4, head: int = 64, act: str = "relu") -> dict[str, Any]:
    return {"LR": lr, "DEPTH": depth, "HEAD_DIM": head, "ACT": act}


def add(study: optuna.Study, config: dict[str, Any], value: float | None = None, status: str = "ok") -> None:
    """A finished trial as the study loop records it: failures carry the penalty and their class."""
    study.add_trial(optuna.trial.create_trial(
        params=SPACE.encode(config), distributions=SPACE.distributions(),
        value=value if status == "ok" else 100.0, user_attrs={"config": config, "status": status},
    ))


def running(study: optuna.Study, config: dict[str, Any]) -> optuna.Trial:
    study.enqueue_trial(SPACE.encode(config), user_attrs={"config": config})
    trial = study.ask()
    SPACE.suggest(trial)  # fixed params: the sampler is not asked
    return trial


def make(method: str, server: FakeLLMServer, tmp_path, options: dict | None = None, **settings: Any):
    llm = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, timeout_s=5.0, **settings)
    client = LLMClient(llm, log_path=tmp_path / "llm_calls.jsonl")
    ctx = MethodContext(space=SPACE, seed=3, options=options or {}, task_description=TASK, llm=client,
                        run_dir=tmp_path)
    return create_sampler(method, ctx), client


def sample(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, dict[str, Any]]:
    trial = study.ask()
    config = SPACE.suggest(trial)
    return study.trials[trial.number], config


def user_prompt(request: dict[str, Any]) -> str:
    return request["body"]["messages"][-1]["content"]


def test_registered():
    names = available_methods()
    assert {"agent-hps", "llambo", "llambo-hub"} <= set(names)


# -- agent-hps -------------------------------------------------------------------------------------
def test_agent_hps_prompt_proposal_and_records(tmp_path):
    with FakeLLMServer() as server:
        server.push({"content": '```json\n{"LR": 0.2, "DEPTH": 6.6, "HEAD_DIM": 100, "ACT": "GELU", "X": 1}\n```'})
        sampler, _ = make("agent-hps", server, tmp_path, {"metric": "val_bpb"})
        study = optuna.create_study(sampler=sampler)
        add(study, cfg(0.01, 4, 64), 1.10)
        add(study, cfg(0.02, 12, 256), status="oom")
        add(study, cfg(0.005, 3, 32), 1.05)
        running(study, cfg(0.03, 5, 64))
        frozen, config = sample(study)
    assert config == cfg(0.1, 7, 128, "gelu")
    a = frozen.user_attrs
    assert a["proposal_source"] == "llm" and a["llm_calls"] == 1 and a["llm_error"] is None
    assert a["llm_seconds"] > 0 and a["llm_prompt_tokens"] > 0
    assert a["llm_proposal"]["HEAD_DIM"] == 100
    assert any("DEPTH: 6.6 -> 7" in r for r in a["llm_repairs"]) and any("'X' dropped" in r for r in a["llm_repairs"])
    prompt = user_prompt(server.chat_requests()[0])
    assert TASK in prompt
    assert prompt.index("LR: float") < prompt.index("DEPTH: int") < prompt.index("HEAD_DIM: power of two")
    assert 'trial 1: {"LR": 0.02, "DEPTH": 12, "HEAD_DIM": 256, "ACT": "relu"} -> FAILED: out of memory' in prompt
    assert "100" not in prompt.split("## Evaluations")[1].split("## What")[0].replace("HEAD_DIM", "")
    assert "trial 2: " in prompt and "val_bpb=1.05" in prompt
    assert "## Running now" in prompt and '"LR": 0.03, "DEPTH": 5' in prompt
    assert "## Best so far\ntrial 2 -> val_bpb=1.05" in prompt
    body = server.chat_requests()[0]["body"]
    assert body["response_format"]["json_schema"]["schema"]["properties"]["HEAD_DIM"]["enum"] == [16, 32, 64, 128, 256]
    log = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    assert log[0]["labels"] == {"trial": 4, "method": "agent-hps"} and log[0]["purpose"] == "agent-hps:propose"


def test_agent_hps_reasks_on_garbage_and_on_duplicates(tmp_path):
    with FakeLLMServer() as server:
        server.push({"content": "Let me think about depth..."}, {"content": '{"LR": 0.01, "DEPTH": 4, "HEAD_DIM": 64, '
                                                                          '"ACT": "relu"}'})
        sampler, _ = make("agent-hps", server, tmp_path)
        study = optuna.create_study(sampler=sampler)
        frozen, config = sample(study)
        assert config == cfg() and frozen.user_attrs["llm_calls"] == 2
        assert frozen.user_attrs["llm_repairs"][0] == "first answer rejected: no JSON object found in the reply"
        study.tell(frozen.number, 1.0)
        # the same configuration again: re-asked with the reason, then a new one is accepted
        server.push({"content": json.dumps(cfg())}, {"content": json.dumps(cfg(depth=5))})
        frozen, config = sample(study)
        assert config == cfg(depth=5)
        reask = user_prompt(server.chat_requests()[-1])
        assert "same as trial 0" in reask


def test_agent_hps_missing_keys_filled_from_incumbent(tmp_path):
    with FakeLLMServer() as server:
        server.push({"content": '{"config": {"depth": 9}}'})
        sampler, _ = make("agent-hps", server, tmp_path)
        study = optuna.create_study(sampler=sampler)
        add(study, cfg(0.002, 3, 32, "gelu"), 1.0)
        frozen, config = sample(study)
    assert config == cfg(0.002, 9, 32, "gelu")
    assert "LR missing: 0.002 from incumbent (trial 0)" in frozen.user_attrs["llm_repairs"]


@pytest.mark.parametrize("fallback", ["random", "tpe"])
def test_bad_answers_use_the_explicit_fallback(tmp_path, fallback):
    with FakeLLMServer(responder=lambda body: {"content": "I cannot answer that."}) as server:
        sampler, _ = make("agent-hps", server, tmp_path, {"fallback": fallback})
        study = optuna.create_study(sampler=sampler)
        frozen, config = sample(study)
    a = frozen.user_attrs
    assert a["proposal_source"] == f"llm-fallback:{fallback}"
    assert a["llm_error"].startswith("LLMBadAnswer") and a["llm_calls"] == 2
    assert a["llm_detail"]["answers"] == ["I cannot answer that.", "I cannot answer that."]
    assert not SPACE.violations(config)


def test_fallback_random_is_seeded_per_trial(tmp_path):
    configs = []
    for _ in range(2):
        with FakeLLMServer(responder=lambda body: {"content": "?"}) as server:
            sampler, _ = make("agent-hps", server, tmp_path, {"fallback": "random"})
            configs.append(sample(optuna.create_study(sampler=sampler))[1])
    assert configs[0] == configs[1]


def test_fallback_error_raises_and_marks_the_trial(tmp_path):
    with FakeLLMServer(responder=lambda body: {"content": "no"}) as server:
        sampler, _ = make("agent-hps", server, tmp_path, {"fallback": "error"})
        study = optuna.create_study(sampler=sampler)
        trial = study.ask()
        with pytest.raises(LLMBadAnswer):
            SPACE.suggest(trial)
    a = study.trials[trial.number].user_attrs
    assert a["proposal_source"] == "llm-error" and a["llm_error"].startswith("LLMBadAnswer")


def test_endpoint_down_falls_back_then_stops(tmp_path):
    with FakeLLMServer() as server:
        sampler, client = make("agent-hps", server, tmp_path, {"fallback": "tpe", "max_unavailable_in_row": 2})
        study = optuna.create_study(sampler=sampler)
        client.model  # noqa: B018 - connect while the server is up
    frozen, _ = sample(study)
    assert frozen.user_attrs["proposal_source"] == "llm-fallback:tpe"
    assert frozen.user_attrs["llm_error"].startswith("LLMUnavailable")
    study.tell(frozen.number, 1.0)
    trial = study.ask()
    with pytest.raises(LLMUnavailable, match="failed 2 trials in a row"):
        SPACE.suggest(trial)


def test_prompt_budget_caps_history(tmp_path):
    with FakeLLMServer(responder=lambda body: {"content": json.dumps(cfg(0.0123, 11, 16, "gelu"))}) as server:
        sampler, client = make("agent-hps", server, tmp_path, {"history": 500, "best_k": 500},
                               context_tokens=2500, max_tokens=300)
        study = optuna.create_study(sampler=sampler)
        for i in range(300):
            add(study, cfg(1e-4 * (1 + i % 97), 2 + i % 10, 2 ** (4 + i % 5), "relu"), 2.0 - i * 1e-4 if i != 17
                else 0.5)
        frozen, config = sample(study)
    assert frozen.user_attrs["proposal_source"] == "llm"
    prompt = user_prompt(server.chat_requests()[0])
    shown = re.findall(r"^trial (\d+): ", prompt, flags=re.M)
    omitted = int(re.search(r"\((\d+) other evaluations are not shown", prompt).group(1))
    assert len(shown) + omitted == 300 and omitted > 200
    assert "17" in shown and "299" in shown  # the best and the latest survive
    strict = TokenCounter(chars_per_token=3.5)
    assert strict.count_messages(server.chat_requests()[0]["body"]["messages"]) <= 2500 - 300
    assert frozen.user_attrs["llm_detail"]["rows_omitted"] == omitted


# -- llambo ----------------------------------------------------------------------------------------
def _last_config(prompt: str) -> dict[str, Any]:
    return json.loads(prompt.rsplit("Hyperparameter configuration: ", 1)[1].split("\n", 1)[0])


def llambo_responder(candidates: list[dict[str, Any]], predict=lambda c: 1.0 + abs(math.log10(c["LR"]) + 2)):
    def respond(body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["messages"][-1]["content"]
        if "Predict the performance" in prompt:
            return {"content": json.dumps({"performance": predict(_last_config(prompt))})}
        if "Classify the last configuration" in prompt:
            return {"content": json.dumps({"label": int(_last_config(prompt)["LR"] < 0.005)})}
        return {"choices": [json.dumps(c) for c in candidates][: int(body.get("n") or 1)]}

    return respond


def seeded_study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    study = optuna.create_study(sampler=sampler)
    add(study, cfg(0.05, 4, 64), 1.30)
    add(study, cfg(0.001, 6, 32), 1.20)
    add(study, cfg(0.02, 12, 256, "gelu"), status="oom")
    return study


def test_llambo_candidates_surrogate_and_ei(tmp_path):
    candidates = [cfg(0.03, 5, 64), cfg(0.01, 5, 64), cfg(0.001, 6, 32), cfg(0.0004, 3, 16, "gelu")]
    with FakeLLMServer(responder=llambo_responder(candidates)) as server:
        sampler, _ = make("llambo", server, tmp_path, {"n_candidates": 4, "n_samples": 3, "pad_random": False,
                                                       "metric": "val_bpb"})
        study = seeded_study(sampler)
        running(study, cfg(0.0004, 3, 16, "gelu"))
        frozen, config = sample(study)
    assert config == cfg(0.01, 5, 64)  # predicted 1.0: the best EI (candidate 3 duplicates trial 1, 4 is running)
    a = frozen.user_attrs
    detail = a["llm_detail"]
    assert a["proposal_source"] == "llm" and detail["phase"] == "acquisition"
    assert detail["candidates_llm"] == 2 and detail["duplicates"] == 2 and detail["chosen_origin"] == "llm"
    assert detail["target"] == pytest.approx(1.20 - 0.1 * 0.10)  # better than the best: best - alpha * range
    assert a["llm_calls"] == 1 + 2  # one candidate call (n=4) + one surrogate call (n=3) per candidate
    gen = user_prompt(server.chat_requests("llambo:candidates")[0])
    assert "target performance of 1.19" in gen
    assert "Performance: 1.4 (failed: out of memory; penalty value)" in gen  # worst 1.3 + range 0.1, not 100
    assert '{"LR": 0.0004, "DEPTH": 3, "HEAD_DIM": 16, "ACT": "gelu"}' in gen.split("being evaluated right now")[1]
    sur = server.chat_requests("llambo:surrogate")
    assert len(sur) == 2 and all(r["body"]["n"] == 3 for r in sur)
    assert user_prompt(sur[0]).rsplit("Hyperparameter configuration:", 1)[0] == \
        user_prompt(sur[1]).rsplit("Hyperparameter configuration:", 1)[0]  # shared prefix for the prompt cache


def test_llambo_without_n_support_repeats_calls_and_pads(tmp_path):
    candidates = [cfg(0.03, 5, 64), cfg(0.01, 5, 64)]
    responder = llambo_responder(candidates)
    with FakeLLMServer(responder=lambda body: responder({**body, "n": 2}), supports_n=False) as server:
        sampler, _ = make("llambo", server, tmp_path, {"n_candidates": 3, "n_samples": 2, "max_rounds": 1})
        study = seeded_study(sampler)
        frozen, config = sample(study)
    detail = frozen.user_attrs["llm_detail"]
    # n ignored: one answer per call, so 3 candidate calls (the same answer: 2 duplicates), then padding
    assert detail["candidates_llm"] == 1 and detail["duplicates"] == 2 and detail["candidates_random"] == 2
    assert frozen.user_attrs["llm_calls"] == 3 + 3 * 2
    seeds = [r["body"]["seed"] for r in server.chat_requests("llambo:surrogate")]
    assert len(set(seeds)) == 6


def test_llambo_surrogate_garbage_falls_back(tmp_path):
    def respond(body):
        if "Predict the performance" in body["messages"][-1]["content"]:
            return {"content": "It depends on many things."}
        return {"choices": [json.dumps(cfg(0.03, 5, 64))]}

    with FakeLLMServer(responder=respond) as server:
        sampler, _ = make("llambo", server, tmp_path, {"n_candidates": 1, "n_samples": 2, "fallback": "random"})
        frozen, config = sample(seeded_study(sampler))
    assert frozen.user_attrs["proposal_source"] == "llm-fallback:random"
    assert "surrogate gave no usable prediction" in frozen.user_attrs["llm_error"]


def test_llambo_warm_start_without_successes(tmp_path):
    with FakeLLMServer() as server:
        server.push({"content": json.dumps(cfg(0.003, 8, 128))})
        sampler, _ = make("llambo", server, tmp_path)
        frozen, config = sample(optuna.create_study(sampler=sampler))
    assert config == cfg(0.003, 8, 128) and frozen.user_attrs["llm_detail"]["phase"] == "warm-start"


def test_llambo_maximize_target_is_above_best(tmp_path):
    with FakeLLMServer(responder=llambo_responder([cfg(0.01, 5, 64)])) as server:
        sampler, _ = make("llambo", server, tmp_path, {"n_candidates": 1, "n_samples": 1})
        study = optuna.create_study(sampler=sampler, direction="maximize")
        add(study, cfg(0.05, 4, 64), 1.30)
        add(study, cfg(0.001, 6, 32), 1.20)
        frozen, _ = sample(study)
    assert frozen.user_attrs["llm_detail"]["target"] == pytest.approx(1.31)


def test_llambo_history_capped_by_budget(tmp_path):
    with FakeLLMServer(responder=llambo_responder([cfg(0.0123, 11, 16)])) as server:
        sampler, _ = make("llambo", server, tmp_path, {"n_candidates": 1, "n_samples": 1},
                          context_tokens=3000, max_tokens=200)
        study = optuna.create_study(sampler=sampler)
        for i in range(250):
            add(study, cfg(1e-4 * (1 + i % 97), 2 + i % 10, 2 ** (4 + i % 5)), 2.0 - i * 1e-4)
        frozen, _ = sample(study)
    assert frozen.user_attrs["proposal_source"] == "llm"
    for request in server.chat_requests():
        assert TokenCounter().count_messages(request["body"]["messages"]) <= 3000 - 200
        assert "other evaluations are not shown" in user_prompt(request)


# -- llambo-hub ------------------------------------------------------------------------------------
def test_llambo_hub(tmp_path):
    candidates = [{"LR": 0.03, "DEPTH": 5, "HEAD_DIM": 64, "ACT": "gelu"}, {"LR": 0.002, "DEPTH": 7, "HEAD_DIM": 32}]
    with FakeLLMServer(responder=llambo_responder(candidates)) as server:
        sampler, _ = make("llambo-hub", server, tmp_path, {"n_candidates": 2, "n_samples": 2, "pad_random": False})
        study = optuna.create_study(sampler=sampler)
        first, _ = sample(study)  # the hub's random initial trials
        assert first.user_attrs["proposal_source"] == "random-init" and first.user_attrs["llm_calls"] == 0
        study.tell(first.number, 1.5)
        study.add_trial(optuna.trial.create_trial(
            params=SPACE.encode(cfg(0.05, 4, 64)), distributions=SPACE.distributions(), value=1.3,
            user_attrs={"config": cfg(0.05, 4, 64), "status": "ok"}))
        add(study, cfg(0.001, 6, 32), 1.20)
        add(study, cfg(0.02, 12, 256, "gelu"), status="oom")
        frozen, config = sample(study)
    a = frozen.user_attrs
    assert a["proposal_source"] == "llm"
    assert {k: config[k] for k in ("LR", "DEPTH", "HEAD_DIM")} == {"LR": 0.002, "DEPTH": 7, "HEAD_DIM": 32}
    assert a["llm_detail"]["chosen"]["score"] == 1.0  # P(good) from the binary surrogate
    gen = user_prompt(server.chat_requests("llambo-hub:candidates")[0])
    sur = user_prompt(server.chat_requests("llambo-hub:surrogate")[0])
    assert '"ACT"' not in gen.split("avoid configurations similar")[1].split("\n", 2)[2]  # LLM sees numeric params
    assert "ACT: categorical" not in gen
    assert "out of memory" in gen.split("avoid configurations similar")[1]  # failures listed to avoid ...
    examples = sur.split("The following are past evaluations")[1]
    assert "Label: 1" in examples and "Label: 0" in examples
    assert '"DEPTH": 12' not in examples  # ... and not labelled examples of the surrogate
    assert examples.count("Label: 1") == 1  # top 20% of 3 successes
    assert "target performance of 1.1" in gen  # best 1.2 - 0.2 * range 0.3 = 1.14
    # categoricals: seeded random per trial, identical for the same seed and trial number
    with FakeLLMServer(responder=llambo_responder(candidates)) as server:
        again, _ = make("llambo-hub", server, tmp_path, {"n_candidates": 2, "n_samples": 2, "pad_random": False})
        assert again.fixed_values(study, frozen) == {"ACT": config["ACT"]}


def test_whole_study_with_optimize(tmp_path):
    """The sampler inside study.optimize, with the objective writing the attributes the loop writes."""
    def objective(trial: optuna.Trial) -> float:
        config = SPACE.suggest(trial)
        trial.set_user_attr("config", config)
        if config["DEPTH"] * config["HEAD_DIM"] > 1024:
            trial.set_user_attr("status", "oom")
            return 100.0
        trial.set_user_attr("status", "ok")
        return abs(math.log10(config["LR"]) + 2.5) + 0.01 * config["DEPTH"]

    proposals = iter([cfg(0.001 * (i + 1), 2 + i, 16) for i in range(10)])
    with FakeLLMServer(responder=lambda body: {"content": json.dumps(next(proposals))}) as server:
        sampler, _ = make("agent-hps", server, tmp_path)
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective, n_trials=5)
    assert [t.user_attrs["proposal_source"] for t in study.trials] == ["llm"] * 5
    assert [t.user_attrs["config"]["DEPTH"] for t in study.trials] == [2, 3, 4, 5, 6]


def test_unknown_option_warns(tmp_path):
    with FakeLLMServer() as server, pytest.warns(UserWarning, match="unknown option"):
        make("llambo", server, tmp_path, {"n_candidate": 3})


def test_random_initial_trials_respect_constraints(tmp_path):
    from centaur.space.constraints import Constraint

    constrained = SearchSpace(SPACE.params, constraints=(Constraint("DEPTH * HEAD_DIM <= 128"),))
    with FakeLLMServer() as server:
        client = LLMClient(LLMSettings(base_url=server.base_url, model="fake-model"))
        ctx = MethodContext(space=constrained, seed=1, options={"n_initial": 5}, llm=client)
        study = optuna.create_study(sampler=create_sampler("llambo-hub", ctx))
        for _ in range(5):
            trial = study.ask()
            config = constrained.suggest(trial)
            assert not constrained.violations(config)
            assert study.trials[trial.number].user_attrs["proposal_source"] == "random-init"
            study.tell(trial, 1.0)
        assert server.chat_requests() == []


@pytest.mark.parametrize("method", ["agent-hps", "llambo", "centaur"])
def test_close_stops_the_client_the_sampler_built_but_not_a_shared_one(tmp_path, monkeypatch, method):
    """A bench worker runs many studies in one process: each study's own client (and the local server it
    started) must end with the study, while a client the caller shares stays open."""
    closed: list[LLMClient] = []
    monkeypatch.setattr(LLMClient, "close", lambda self: closed.append(self))
    own = create_sampler(method, MethodContext(space=SPACE, seed=0, task_description=TASK, run_dir=tmp_path,
                                               llm=LLMSettings(base_url="http://127.0.0.1:9/v1", model="m")))
    own.close()
    assert closed == [own.client]
    shared = LLMClient(LLMSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    create_sampler(method, MethodContext(space=SPACE, seed=0, task_description=TASK, llm=shared)).close()
    assert closed == [own.client]
