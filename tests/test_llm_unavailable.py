"""Every LLM method with an endpoint that is down, answers HTTP 500 or hangs: each LLM turn falls back
(marked in the trial), `max_unavailable_in_row` such turns stop the study with an LLMError that names the
endpoint (never a bare AssertionError), and a resumed study's fallback does not replay configurations it
already ran (issue #13, item 6)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_llm_server import FakeLLMServer

import centaur
from centaur.llm import LLMClient, LLMSettings, LLMUnavailable
from centaur.methods.base import MethodContext, create_sampler
from centaur.space import Param, SearchSpace
from centaur.tasks.base import TrialResult, TrialStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent
DOWN = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there, connections are refused
# Options that make every trial after the baseline an LLM turn (centaur: no warm-up, all LLM turns).
METHODS: dict[str, dict[str, Any]] = {
    "agent-hps": {},
    "llambo": {"n_candidates": 2, "n_samples": 2},
    "llambo-hub": {"n_candidates": 2, "n_samples": 2, "n_initial": 1},
    "centaur": {"llm_warmup": 1, "llm_ratio": 1.0, "trust": "fixed"},  # every trial after the first an LLM turn
}
FALLBACK = {"agent-hps": "tpe", "llambo": "tpe", "llambo-hub": "tpe", "centaur": "cmaes"}


class QuadTask:
    """The quadratic fixture's bowl, evaluated in-process (no training subprocess per trial)."""

    name = "quad"
    metric = "val_bpb"
    space = SearchSpace((
        Param("LEARNING_RATE", "float", 0.01, low=1e-4, high=1.0, log=True),
        Param("WIDTH", "pow2", 64, low=16, high=1024),
        Param("LAYERS", "int", 3, low=1, high=8),
    ))

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        loss = ((math.log10(config["LEARNING_RATE"]) + 2.5) ** 2 + (math.log2(config["WIDTH"]) - 7) ** 2 / 10
                + (config["LAYERS"] - 5) ** 2 / 20 + 1.0)
        return TrialResult(TrialStatus.OK, loss, cost_s=1.0, wall_s=0.0)

    def describe(self) -> str:
        return "A quadratic bowl standing in for a training run. Objective: minimize val_bpb."


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean LLM environment: only what a test sets reaches the settings."""
    for var in list(os.environ):
        if var.startswith("CENTAUR_LLM_") or var in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
            monkeypatch.delenv(var)
    return monkeypatch


def tune(method: str, run_dir: Path, n_trials: int, **options: Any) -> centaur.TuneResult:
    return centaur.tune(QuadTask(), method=method, budget=None, n_trials=n_trials, run_dir=run_dir,
                        method_options={**METHODS[method], **options})


def stored_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run_dir / 'study.db'}")
    return study.get_trials()


def sources(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return [t.user_attrs.get("proposal_source") for t in trials]


def config_keys(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return [json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials if "config" in t.user_attrs]


def llm_turns(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.user_attrs.get("proposal_source") not in ("baseline", "random-init")]


# -- endpoints that fail in different ways ---------------------------------------------------------
class SwitchServer:
    """An OpenAI-compatible endpoint that answers every request, /v1/models included, with HTTP `status`
    (a proxy in front of a dead server), or normally with `answer` while `status` is None."""

    def __init__(self, status: int | None = 500, answer: str = "fine") -> None:
        self.status = status
        self.answer = answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": server.answer}}]})

            def _send(self, payload: dict[str, Any]) -> None:
                status = server.status or 200
                data = json.dumps(payload if status == 200 else {"error": {"message": "upstream is down"}}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def error_server() -> Iterator[SwitchServer]:
    server = SwitchServer(500)
    yield server
    server.stop()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections (in the kernel's backlog) and never answers: a hung server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


# -- the client ------------------------------------------------------------------------------------
def test_unreachable_endpoint_is_unavailable_on_every_request_not_an_assertion(tmp_path, llm_env):
    """The defect: the first failed model listing left a half-set-up connection behind, and the next
    request died on `assert self._model is not None`."""
    client = LLMClient(LLMSettings(base_url=DOWN, max_retries=1), log_path=tmp_path / "calls.jsonl")
    with pytest.raises(LLMUnavailable, match=r"127\.0\.0\.1:9.*2 attempts"):
        client.chat([{"role": "user", "content": "hi"}])
    assert client.endpoint_down
    for _ in range(2):  # the endpoint is known to be down now: one attempt per request, no retry cycle
        with pytest.raises(LLMUnavailable, match=r"127\.0\.0\.1:9.*\(1 attempt\)"):
            client.chat([{"role": "user", "content": "hi"}])
    log = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c["purpose"] for c in log] == ["list-models"] * 3 and all("connection" in c["error"] for c in log)


def test_model_listing_answering_500_is_unavailable(error_server, tmp_path):
    client = LLMClient(LLMSettings(base_url=error_server.base_url, max_retries=0))
    for _ in range(2):
        with pytest.raises(LLMUnavailable, match="HTTP 500"):
            client.chat([{"role": "user", "content": "hi"}])


def test_endpoint_that_comes_back_is_used_again(error_server):
    client = LLMClient(LLMSettings(base_url=error_server.base_url, max_retries=0))
    with pytest.raises(LLMUnavailable):
        client.chat([{"role": "user", "content": "hi"}])
    assert client.endpoint_down
    error_server.status = None
    assert client.chat([{"role": "user", "content": "hi"}]).text == "fine"
    assert not client.endpoint_down and client.model == "fake-model"


# -- every method in a real study ------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_endpoint_down_falls_back_then_stops_with_a_clear_error(method, tmp_path, llm_env):
    llm_env.setenv("CENTAUR_LLM_BASE_URL", DOWN)
    llm_env.setenv("CENTAUR_LLM_MAX_RETRIES", "1")
    with pytest.raises(LLMUnavailable) as raised:
        tune(method, tmp_path, n_trials=10)
    message = str(raised.value)
    assert "127.0.0.1:9" in message and re.search(r"failed 3 (trials|LLM turns) in a row", message)
    assert "max_unavailable_in_row" in message and "resume" in message
    trials = stored_trials(tmp_path)
    turns = llm_turns(trials)
    assert sources(turns) == [f"llm-fallback:{FALLBACK[method]}"] * 2 + ["llm-error"]
    for t in turns:
        assert t.user_attrs["llm_error"].startswith("LLMUnavailable") and "127.0.0.1:9" in t.user_attrs["llm_error"]
    # the first turn pays the SDK's retries; the next ones know the endpoint is down and try once
    assert ["(2 attempts)" in t.user_attrs["llm_error"] for t in turns] == [True, False, False]
    assert [t.state for t in turns] == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.FAIL]


@pytest.mark.parametrize("method", list(METHODS))
def test_endpoint_down_short_study_finishes_on_the_fallback(method, tmp_path, llm_env):
    """The reproduction of the issue: 3 trials (the baseline + 2 LLM turns) stay under the limit."""
    llm_env.setenv("CENTAUR_LLM_BASE_URL", DOWN)
    llm_env.setenv("CENTAUR_LLM_MAX_RETRIES", "0")
    result = tune(method, tmp_path, n_trials=3)
    assert result.stop_reason == "3 trials run"
    trials = stored_trials(tmp_path)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(s.startswith("llm-fallback:") for s in sources(llm_turns(trials)))


@pytest.mark.parametrize("method", list(METHODS))
def test_endpoint_answering_500_stops_after_the_limit(method, error_server, tmp_path, llm_env):
    """The model listing answers 500: that is an unavailable endpoint too (it was a request error that
    reset the count, so a study never stopped)."""
    llm_env.setenv("CENTAUR_LLM_BASE_URL", error_server.base_url)
    llm_env.setenv("CENTAUR_LLM_MAX_RETRIES", "0")
    with pytest.raises(LLMUnavailable, match="in a row"):
        tune(method, tmp_path, n_trials=10, max_unavailable_in_row=2)
    turns = llm_turns(stored_trials(tmp_path))
    assert sources(turns) == [f"llm-fallback:{FALLBACK[method]}", "llm-error"]
    assert all("HTTP 500" in t.user_attrs["llm_error"] for t in turns)


@pytest.mark.parametrize("method", list(METHODS))
def test_chat_answering_500_stops_after_the_limit(method, tmp_path, llm_env):
    with FakeLLMServer(responder=lambda body: {"status": 503, "error": "overloaded"}) as server:
        llm_env.setenv("CENTAUR_LLM_BASE_URL", server.base_url)
        llm_env.setenv("CENTAUR_LLM_MAX_RETRIES", "0")
        with pytest.raises(LLMUnavailable, match="in a row"):
            tune(method, tmp_path, n_trials=10, max_unavailable_in_row=2)
    turns = llm_turns(stored_trials(tmp_path))
    assert sources(turns) == [f"llm-fallback:{FALLBACK[method]}", "llm-error"]
    assert all("HTTP 503" in t.user_attrs["llm_error"] for t in turns)


@pytest.mark.parametrize("method", list(METHODS))
def test_hanging_endpoint_times_out_and_stops(method, black_hole, tmp_path, llm_env):
    llm_env.setenv("CENTAUR_LLM_BASE_URL", black_hole)
    llm_env.setenv("CENTAUR_LLM_TIMEOUT_S", "0.3")
    llm_env.setenv("CENTAUR_LLM_MAX_RETRIES", "1")
    with pytest.raises(LLMUnavailable, match="in a row"):
        tune(method, tmp_path, n_trials=10, max_unavailable_in_row=2)
    turns = llm_turns(stored_trials(tmp_path))
    assert sources(turns) == [f"llm-fallback:{FALLBACK[method]}", "llm-error"]
    first, second = (t.user_attrs["llm_error"] for t in turns)
    assert "no answer within 0.3s" in first and "(2 attempts)" in first
    assert "no answer within 0.3s" in second and "(1 attempt)" in second  # known down: no retry cycle


def test_endpoint_back_up_resets_the_count(error_server, tmp_path):
    """Two unavailable turns, then the endpoint answers: the LLM proposes again and the count restarts."""
    error_server.answer = '{"LEARNING_RATE": 0.003, "WIDTH": 128, "LAYERS": 5}'
    client = LLMClient(LLMSettings(base_url=error_server.base_url, max_retries=0))
    ctx = MethodContext(space=QuadTask.space, seed=0, options={"max_unavailable_in_row": 3}, llm=client)
    sampler = create_sampler("agent-hps", ctx)
    study = optuna.create_study(sampler=sampler)
    for _ in range(2):
        trial = study.ask()
        QuadTask.space.suggest(trial)
        study.tell(trial, 1.0)
    error_server.status = None
    trial = study.ask()
    config = QuadTask.space.suggest(trial)
    assert sources(study.trials) == ["llm-fallback:tpe", "llm-fallback:tpe", "llm"]
    assert config == {"LEARNING_RATE": 0.003, "WIDTH": 128, "LAYERS": 5}
    assert sampler._unavailable_in_row == 0


# -- resume: the fallback continues, it does not replay ------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_resumed_fallback_does_not_repeat_configurations(method, tmp_path, llm_env):
    llm_env.setenv("CENTAUR_LLM_BASE_URL", DOWN)
    llm_env.setenv("CENTAUR_LLM_MAX_RETRIES", "0")
    for _ in range(2):  # the second call is a new sampler on the stored study, as in a new process
        tune(method, tmp_path, n_trials=4, max_unavailable_in_row=0)
    trials = stored_trials(tmp_path)
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(s.startswith("llm-fallback:") for s in sources(llm_turns(trials)))
    keys = config_keys(trials)
    assert len(set(keys)) == len(keys), "a resumed fallback re-proposed configurations of the first run"


@pytest.mark.parametrize("method", ["agent-hps", "llambo"])
def test_resumed_fallback_after_bad_answers_does_not_repeat_configurations(method, tmp_path, llm_env):
    """The same with an endpoint that answers, but nothing usable (the fallback without the connection bug)."""
    with FakeLLMServer(responder=lambda body: {"content": "I would rather not say."}) as server:
        llm_env.setenv("CENTAUR_LLM_BASE_URL", server.base_url)
        for _ in range(2):
            tune(method, tmp_path, n_trials=4)
    trials = stored_trials(tmp_path)
    assert sources(llm_turns(trials)) == ["llm-fallback:tpe"] * 7
    keys = config_keys(trials)
    assert len(set(keys)) == len(keys), "a resumed fallback re-proposed configurations of the first run"


def test_fallback_draw_that_repeats_a_trial_is_redrawn(tmp_path, llm_env):
    """Whatever the fallback sampler does, its draw never repeats an evaluated configuration."""

    class Stubborn(optuna.samplers.BaseSampler):  # always the baseline
        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, name, distribution):
            return QuadTask.space.encode(QuadTask.space.defaults())[name]

    client = LLMClient(LLMSettings(base_url=DOWN, max_retries=0))
    ctx = MethodContext(space=QuadTask.space, seed=0, options={"max_unavailable_in_row": 0}, llm=client)
    sampler = create_sampler("agent-hps", ctx)
    sampler.inner._partner = Stubborn()  # create_sampler puts every method in its failure view
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(QuadTask.space.encode(QuadTask.space.defaults()))
    seen = []
    for _ in range(3):
        trial = study.ask()
        seen.append(json.dumps(QuadTask.space.suggest(trial), sort_keys=True))
        study.tell(trial, 1.0)
    assert len(set(seen)) == 3
    assert study.trials[1].user_attrs["llm_repairs"] == ["fallback draw repeated trial 0: redrawn at random"]


# -- the command line --------------------------------------------------------------------------------
def centaur_command() -> list[str]:
    exe = shutil.which("centaur", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "centaur"]


@pytest.mark.slow
def test_cli_endpoint_down_is_a_clean_exit_and_resumes_without_replay(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTAUR_LLM_") and not k.startswith("OPENAI_")}
    env["CENTAUR_LLM_BASE_URL"] = DOWN
    command = [*centaur_command(), "tune", "tests/fixtures/quadratic/train.py", "-m", "agent-hps",
               "--n-trials", "3", "--run-dir", str(tmp_path)]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = first.stdout + first.stderr
    assert "Traceback" not in out and "AssertionError" not in out, out
    assert first.returncode in (0, 2), out
    if first.returncode == 2:
        assert "error:" in first.stderr and "127.0.0.1:9" in first.stderr
    assert first.returncode == 0  # 3 trials: the baseline and 2 fallback turns, under the limit of 3
    assert out.count("llm-fallback:tpe") == 2, out
    # Resumed in a new process, endpoint still down: 2 more fallback turns, then a clean stop.
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = second.stdout + second.stderr
    assert "Traceback" not in out, out
    assert second.returncode == 2, out
    assert "error:" in second.stderr and "127.0.0.1:9" in second.stderr and "in a row" in second.stderr
    trials = stored_trials(tmp_path)
    assert sources(trials) == ["baseline"] + ["llm-fallback:tpe"] * 4 + ["llm-error"]
    keys = config_keys(trials)
    assert len(set(keys)) == len(keys) == 5, keys
