"""The local default LLM for real: llama-cpp-python's server on SmolLM2-135M, one thread.

    pytest -m llm tests/test_llm_real.py
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from centaur.llm import LLMClient, LLMSettings
from centaur.llm.local import LLMSetupError, LocalServer, check_llama_cpp, default_gguf
from centaur.methods.base import MethodContext, create_sampler
from centaur.space import Param, SearchSpace

pytestmark = [pytest.mark.slow, pytest.mark.llm]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _model_or_skip() -> Path:
    try:
        check_llama_cpp()
        return default_gguf()
    except LLMSetupError as e:
        pytest.skip(f"local LLM not available: {e}")


SPACE = SearchSpace((
    Param("LR", "float", 0.01, low=1e-4, high=0.1, log=True),
    Param("DEPTH", "int", 4, low=2, high=12),
    Param("HEAD_DIM", "pow2", 64, low=16, high=256),
    Param("ACT", "categorical", "relu", choices=("relu", "gelu")),
))
TASK = ("Train a small GPT language model for a fixed 5-minute budget on one CPU with a 4 GiB memory cap. "
        "Objective: minimize val_bpb. Large DEPTH with large HEAD_DIM runs out of memory.")


def objective(trial: optuna.Trial) -> float:
    config = SPACE.suggest(trial)
    trial.set_user_attr("config", config)
    if config["DEPTH"] * config["HEAD_DIM"] > 1024:
        trial.set_user_attr("status", "oom")
        return 100.0
    trial.set_user_attr("status", "ok")
    return 1.0 + 0.1 * (math.log10(config["LR"]) + 2.5) ** 2 + 0.01 * abs(config["DEPTH"] - 6)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    gguf = _model_or_skip()
    run_dir = tmp_path_factory.mktemp("llm-run")
    settings = LLMSettings(gguf=str(gguf), threads=1, context_tokens=4096, max_tokens=256, timeout_s=120)
    server = LocalServer.from_settings(settings, log_dir=run_dir)
    with server, LLMClient(settings, log_path=run_dir / "llm_calls.jsonl", server=server) as c:
        yield c


def test_local_server_lifecycle(tmp_path):
    gguf = _model_or_skip()
    with LocalServer(gguf, threads=1, n_ctx=1024, log_path=tmp_path / "server.log") as server:
        with urllib.request.urlopen(server.base_url + "/models", timeout=5) as r:
            assert json.load(r)["data"][0]["id"] == server.alias
        pid = server._proc.pid
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_local_server_bad_model_fails_with_log_tail(tmp_path):
    _model_or_skip()
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(LLMSetupError, match="exited with code") as info:
        LocalServer(bogus, threads=1, log_path=tmp_path / "server.log", start_timeout_s=60).start()
    assert "log " in str(info.value) and str(tmp_path / "server.log") in str(info.value)


def test_local_server_stopped_on_sigterm(tmp_path):
    gguf = _model_or_skip()
    script = textwrap.dedent(f"""
        import sys, time
        from centaur.llm.local import LocalServer
        s = LocalServer({str(gguf)!r}, threads=1, n_ctx=512, log_path={str(tmp_path / 'server.log')!r}).start()
        print(s._proc.pid, flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    server_pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    for _ in range(50):
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the local server outlived its parent's SIGTERM")


def test_chat_json_with_the_real_model(client):
    schema = {"type": "object", "properties": {"lr": {"type": "number"}}, "required": ["lr"]}
    answer = client.ask_json([{"role": "user", "content": "Propose a learning rate as JSON {\"lr\": number}."}],
                             schema=schema, purpose="smoke", seed=1)
    assert isinstance(answer.value["lr"], float | int)
    assert client.format_mode == "json_object" and client.supports_n is False
    assert client.calls[-1].prompt_tokens > 0


@pytest.mark.parametrize("method, options", [
    ("agent-hps", {"fallback": "random"}),
    ("llambo", {"fallback": "random", "n_candidates": 3, "n_samples": 2, "max_rounds": 2}),
])
def test_methods_with_the_real_model(client, method, options, tmp_path):
    ctx = MethodContext(space=SPACE, seed=0, options=options, task_description=TASK, llm=client, run_dir=tmp_path)
    study = optuna.create_study(sampler=create_sampler(method, ctx))
    start = time.monotonic()
    study.optimize(objective, n_trials=4)
    elapsed = time.monotonic() - start
    sources = [t.user_attrs["proposal_source"] for t in study.trials]
    print(f"{method}: {elapsed:.1f}s, sources {sources}")
    assert set(sources) <= {"llm", "llm-fallback:random"} and "llm" in sources
    for t in study.trials:
        a = t.user_attrs
        assert a["llm_calls"] >= 1 and a["llm_seconds"] > 0 and a["llm_prompt_tokens"] > 0
        assert not SPACE.violations(a["config"])
        if a["proposal_source"] == "llm" and a["llm_detail"].get("chosen_origin") != "random":
            assert isinstance(a["llm_proposal"], dict)  # what the model proposed, before repair
        elif a["proposal_source"] == "llm":  # llambo chose one of its random padding candidates
            assert a["llm_detail"]["llm_candidates"]
        else:
            assert a["llm_error"]
    assert elapsed < 150
