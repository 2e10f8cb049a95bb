"""agent-code: edits parsed and applied strictly, the integrity guard on the bundled task, and whole
studies on a toy script driven by the scripted fake LLM (kept, reverted, unusable, syntax error,
tampering, environment and network isolation, resume)."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
from pathlib import Path

import optuna
import pytest
from fake_llm_server import FakeLLMServer

from centaur.agentcode.edits import Edit, EditError, apply_edits, parse_reply
from centaur.agentcode.integrity import Protection, check_output, check_source
from centaur.agentcode.loop import BEST_SOURCE_ATTR, DECISION_ATTR, DESCRIPTION_ATTR, DIFF_ATTR, REASON_ATTR
from centaur.agentcode.sandbox import network_isolation
from centaur.api import BUNDLED_TASK, resolve_task, tune
from centaur.llm import LLMSettings
from centaur.methods.base import MethodContext, MethodError, available_methods, create_sampler
from centaur.space import load_space
from centaur.study.storage import default_storage_url

optuna.logging.set_verbosity(optuna.logging.WARNING)

TOY_TRAIN = '''\
"""Toy training script for the agent-code tests: moves w towards the data for a fixed time budget."""

import os
import sys
import time

from prepare import load_split

LR = 0.1  # step size
MOMENTUM = 0.0  # unused knob
TIME_BUDGET = 0.3  # seconds of counted training


def evaluate(w, val):
    return sum((w - v) ** 2 for v in val) / len(val)


def main():
    train, val = load_split()
    w = 0.0
    t0 = time.time()
    counted = 0.0
    while counted < TIME_BUDGET:
        time.sleep(0.05)
        w = w + LR * (train[-1] - w)
        counted = time.time() - t0
    val_loss = evaluate(w, val)
    print("---")
    print(f"val_loss: {val_loss:.6f}")
    print(f"training_seconds: {counted:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
TOY_PREPARE = '''\
def load_split():
    return [1.0, 3.0], [3.0]
'''
TOY_TOML = '''\
[task]
metric = "val_loss"
description = "Toy task: fit one number."

[runner]
trial_timeout = "60s"

[space]
exclude = ["TIME_BUDGET"]

[space.params.LR]
type = "float"
low = 0.001
high = 1.0
log = true

[space.params.MOMENTUM]
type = "float"
low = 0.0
high = 0.9
'''


def reply(description: str, search: str, replace: str) -> dict:
    return {"content": f"DESCRIPTION: {description}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"}


@pytest.fixture
def toy(tmp_path) -> Path:
    task = tmp_path / "toy"
    task.mkdir()
    (task / "train.py").write_text(TOY_TRAIN)
    (task / "prepare.py").write_text(TOY_PREPARE)
    (task / "centaur.toml").write_text(TOY_TOML)
    return task / "train.py"


# -- edits ----------------------------------------------------------------------------------------
def test_parse_reply_and_apply_strictly():
    text = ("Sure!\nDESCRIPTION: raise the LR\n<<<<<<< SEARCH\nLR = 0.1  # step size\n=======\n"
            "LR = 0.5  # step size\n>>>>>>> REPLACE\nbye")
    proposal = parse_reply(text)
    assert proposal.description == "raise the LR"
    assert proposal.edits == [Edit("LR = 0.1  # step size\n", "LR = 0.5  # step size\n")]
    assert "LR = 0.5  # step size" in apply_edits(TOY_TRAIN, proposal.edits)
    with pytest.raises(EditError, match="not found"):
        apply_edits(TOY_TRAIN, [Edit("LR = 0.2\n", "LR = 0.5\n")])
    with pytest.raises(EditError, match="occurs 3 times"):
        apply_edits(TOY_TRAIN, [Edit("    print(", "    print(1, ")])
    with pytest.raises(EditError, match="no SEARCH/REPLACE"):
        parse_reply("DESCRIPTION: nothing\n```python\nLR = 1\n```")


# -- integrity on the bundled task ------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt():
    source = BUNDLED_TASK.read_text()
    space = load_space(BUNDLED_TASK)
    from centaur.config import config_path_for, load_config

    exclude = load_config(config_path_for(BUNDLED_TASK)).exclude
    protection = Protection.for_script(source, metric="val_bpb", constants=exclude, modules={"prepare"},
                                       time_budget=space.constants["TIME_BUDGET"])
    return source, protection


def edited(source: str, old: str, new: str) -> str:
    assert source.count(old) == 1, old
    return source.replace(old, new)


ALLOWED = [
    ("DEPTH = 2  #", "DEPTH = 4  #"),
    ("return self.c_proj(F.relu(self.c_fc(x)).square())", "return self.c_proj(F.gelu(self.c_fc(x)))"),
    ("    if WARMUP_RATIO > 0 and progress < WARMUP_RATIO:", "    if WARMUP_RATIO > 0.01 and progress < WARMUP_RATIO:"),
    ("        adam.step()\n", "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        adam.step()\n"),
    ("    num_params = sum(", "    print('budget', TIME_BUDGET)\n    num_params = sum("),  # a new read is fine
]
FORBIDDEN = [
    ('print(f"val_bpb:          {val_bpb:.6f}")', 'print(f"val_bpb:          {val_bpb * 0.9:.6f}")', "metric line"),
    ('    print("---")\n', '    print("---")\n    print("val_bpb: 0.1")\n', "metric line"),
    ("TIME_BUDGET = 40", "TIME_BUDGET = 20", "TIME_BUDGET"),
    ("EVAL_BYTES = 2**17", "EVAL_BYTES = 2**10", "EVAL_BYTES"),
    ("    n_seq = EVAL_BYTES // MAX_SEQ_LEN", "    n_seq = 4", "evaluate_bpb"),
    ("    counted_steps = step", "    val_bpb = val_bpb - 0.5\n    counted_steps = step", "val_bpb"),
    ("            counted += dt", "            counted += 2 * dt", "counted"),
    ("    train_data, val_data = load_split(", "    val_data = None\n    train_data, val_data = load_split(",
     "val_data"),
    ("    validate_config()\n", "    validate_config()\n    globals()['TIME_BUDGET'] = 1\n", "globals"),
    ("    validate_config()\n", "    validate_config()\n    os.environ['CENTAUR_CUDA_MEM_FRACTION'] = '1'\n",
     "environment"),
    ("    validate_config()\n", "    validate_config()\n    time.perf_counter = lambda: 0.0\n", "patches time"),
    ("    validate_config()\n", "    validate_config()\n    resource.setrlimit(resource.RLIMIT_DATA, (-1, -1))\n",
     "setrlimit"),
    ("import gc\n", "import gc\nimport importlib\n", "importlib"),
    ("import gc\n", "import gc\nimport subprocess\n", "subprocess"),
    ("    validate_config()\n", "    validate_config()\n    __centaur_report__('val_' + 'bpb: 0.1')\n",
     "__centaur_report__"),
    ("    validate_config()\n", "    validate_config()\n    f = sys._getframe(1)\n", "_getframe"),
    ("    validate_config()\n", "    validate_config()\n    os.kill(os.getppid(), 9)\n", ".kill"),
    ("    validate_config()\n", "    validate_config()\n    sys.stdout = open(os.devnull, 'w')\n", "sys.stdout"),
    ('_GPU_SCALE = {"MAX_SEQ_LEN": 2048, "TIME_BUDGET": 300', '_GPU_SCALE = {"MAX_SEQ_LEN": 2048, "TIME_BUDGET": 30',
     "TIME_BUDGET"),
    ("from prepare import DEFAULT_CORPUS, VOCAB_SIZE, load_split", "from prepare import DEFAULT_CORPUS, VOCAB_SIZE\n"
     "from prepare import load_split", "prepare"),
    ("        if step > cfg[\"uncounted_steps\"] and counted >= TIME_BUDGET:",
     "        if step > cfg[\"uncounted_steps\"] and counted >= TIME_BUDGET / 2:", "time budget"),
]


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_bundled_task_allows_ordinary_edits(gpt, old, new):
    source, protection = gpt
    assert check_source(source, edited(source, old, new), protection) == []


@pytest.mark.parametrize(("old", "new", "why"), FORBIDDEN)
def test_bundled_task_rejects_tampering(gpt, old, new, why):
    source, protection = gpt
    problems = check_source(source, edited(source, old, new), protection)
    assert problems, f"not caught: {new!r}"
    assert why in " ".join(problems)


def test_protection_of_bundled_task(gpt):
    _, p = gpt
    assert "evaluate_bpb" in p.functions and p.reports_time and p.time_budget == 40
    assert p.witnessed == ("val_bpb", "training_seconds")
    assert {"TIME_BUDGET", "EVAL_BYTES", "MAX_SEQ_LEN", "SEED", "val_bpb", "counted", "val_data"} <= p.names


def test_runtime_checks():
    p = Protection(metric="val_loss", reports_time=True, time_budget=10.0)
    good = "---\nval_loss: 1.0\ntraining_seconds: 10.1\n"
    assert check_output(good, {"val_loss": 1.0, "training_seconds": 10.1}, 12.0, p, min_training_s=10.0) == []
    forged = good + "val_loss: 0.1\n"
    assert "2 'val_loss:' lines" in " ".join(check_output(forged, {"training_seconds": 10.1}, 12.0, p))
    fast = check_output(good, {"training_seconds": 10.1}, 5.0, p)
    assert "exceeds" in " ".join(fast)
    short = check_output(good, {"training_seconds": 4.0}, 5.0, p, min_training_s=10.0)
    assert "shortened" in " ".join(short)


def test_registered_but_not_a_sampler():
    assert "agent-code" in available_methods()
    with pytest.raises(MethodError, match="not an Optuna sampler"):
        create_sampler("agent-code", MethodContext(space=load_space(BUNDLED_TASK)))


def test_refuses_a_task_that_is_not_a_script(tmp_path):
    with pytest.raises(MethodError, match="not a script task"):
        tune(_FakeTask(), method="agent-code", n_trials=1, run_dir=tmp_path)


class _FakeTask:
    name = "fake"
    metric = "x"

    def __init__(self):
        self.space = load_space(BUNDLED_TASK)

    def describe(self):
        return "fake"


# -- whole studies on the toy task ------------------------------------------------------------------
def _run(toy: Path, server: FakeLLMServer, tmp_path: Path, n_trials: int, tracking=None, callbacks=None,
         **options):
    # The toy task declares no evaluation the tuner can run itself: its metric is the script's own report.
    options.setdefault("trust_script_metric", True)
    llm = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, timeout_s=10.0)
    return tune(toy, method="agent-code", n_trials=n_trials, budget=None, run_dir=tmp_path / "runs", llm=llm,
                method_options=options, tracking=tracking, callbacks=callbacks)


@pytest.mark.slow
def test_study_keeps_reverts_rejects_and_resumes(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-test-key")
    monkeypatch.setenv("CENTAUR_LLM_API_KEY", "sk-secret-test-key")
    with FakeLLMServer() as server:
        port = server.base_url.split(":")[2].split("/")[0]
        server.push(
            reply("raise the LR", "LR = 0.1  # step size\n", "LR = 0.5  # step size\n"),  # 1 kept
            reply("lower the LR", "LR = 0.5  # step size\n", "LR = 0.01  # step size\n"),  # 2 reverted
            reply("edit text that is not there", "LR = 0.7\n", "LR = 0.9\n"),  # 3 does not apply
            reply("broken", "MOMENTUM = 0.0  # unused knob\n", "MOMENTUM = (0.0\n"),  # 4 syntax error
            reply("better metric", '    print(f"val_loss: {val_loss:.6f}")\n',
                  '    print(f"val_loss: {val_loss / 10:.6f}")\n'),  # 5 tampering: metric line
            reply("shorter budget", "TIME_BUDGET = 0.3  # seconds of counted training\n",
                  "TIME_BUDGET = 0.1  # seconds of counted training\n"),  # 6 tampering: budget
            reply("look for keys", "    train, val = load_split()\n",
                  "    train, val = load_split()\n    print('KEY=' + str(os.environ.get('OPENAI_API_KEY')))\n"
                  "    print('KEYS=' + ','.join(k for k in os.environ if 'KEY' in k or 'TOKEN' in k))\n"),  # 7
            reply("phone home", "    train, val = load_split()\n",
                  "    train, val = load_split()\n    import socket\n    try:\n"
                  f"        socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
                  "        print('NET=open')\n    except OSError as e:\n        print('NET=blocked', e)\n"),  # 8
            reply("forge a second line", '    print("---")\n',
                  '    print("---")\n    print("val_" + "loss: 0.0")\n'),  # 9 caught at run time
            reply("forge and leave", "    val_loss = evaluate(w, val)\n",
                  '    print("val_" + "loss: 0.0")\n    print("training_" + "seconds: " + str(counted))\n'
                  "    sys.exit(0)\n    val_loss = evaluate(w, val)\n"),  # 10 no line from the protected print
        )
        result = _run(toy, server, tmp_path, n_trials=11)
        study = result.study
        trials = study.get_trials()
        decisions = [t.user_attrs[DECISION_ATTR] for t in trials]
        assert decisions == ["baseline", "kept", "reverted", "rejected", "rejected", "rejected", "rejected",
                             "reverted", "reverted", "rejected", "rejected"]
        statuses = [t.user_attrs["status"] for t in trials]
        assert statuses[:3] == ["ok", "ok", "ok"] and statuses[3:7] == ["invalid"] * 4
        reasons = [t.user_attrs.get(REASON_ATTR, "") for t in trials]
        assert "not found" in reasons[3] and reasons[4].startswith("syntax")
        assert "metric line" in reasons[5] and "TIME_BUDGET" in reasons[6]
        assert "2 'val_loss:' lines" in reasons[9]
        assert "no 'val_loss:' line from the protected statement" in reasons[10]
        assert "@@centaur-metric" in Path(trials[1].user_attrs["log"]).read_text()
        # Nothing ran for the rejected edits; the cheap trials cost nothing.
        assert all(t.user_attrs["cost_s"] == 0 for t in trials[3:7])
        assert not (tmp_path / "runs" / study.study_name / "trials" / "00003").exists()
        # Params are the hyperparameters of the script each trial ran.
        assert trials[0].params["LR"] == 0.1 and trials[1].params["LR"] == 0.5 and trials[2].params["LR"] == 0.01
        assert trials[3].params["LR"] == 0.5  # unusable edit: the best script's values
        assert trials[1].value < trials[0].value < trials[2].value
        assert trials[1].user_attrs[DESCRIPTION_ATTR] == "raise the LR"
        assert "-LR = 0.1" in trials[1].user_attrs[DIFF_ATTR] and "+LR = 0.5" in trials[1].user_attrs[DIFF_ATTR]
        assert trials[1].user_attrs["llm_calls"] == 1
        best = study.user_attrs[BEST_SOURCE_ATTR]
        assert "LR = 0.5  # step size" in best and "MOMENTUM = 0.0" in best
        assert (tmp_path / "runs" / study.study_name / "best_train.py").read_text() == best
        assert result.summary.best_value == trials[1].value
        # The environment was scrubbed and the network unreachable.
        log7 = Path(trials[7].user_attrs["log"]).read_text()
        assert "KEY=None" in log7 and "KEYS=\n" in log7
        log8 = Path(trials[8].user_attrs["log"]).read_text()
        if network_isolation()[0]:
            assert "NET=blocked" in log8 and trials[8].user_attrs["network_isolated"] is True
        # The task's own files are untouched.
        assert (toy.parent / "train.py").read_text() == TOY_TRAIN

        # A worker that died mid-trial: its trial is closed as lost (and, where the study queues retries,
        # that edit runs again); it never becomes the best.
        dead = study.ask()
        dead.suggest_float("LR", 0.001, 1.0, log=True)
        dead.set_user_attr("config", {"LR": 0.5})
        dead.set_user_attr("owner", {"host": socket.gethostname(), "pid": 2**22 + 12345, "created": 0.0})
        dead.set_user_attr(DESCRIPTION_ATTR, "an edit whose worker died")
        dead_dir = tmp_path / "runs" / study.study_name / "trials" / f"{dead.number:05d}"
        dead_dir.mkdir(parents=True)
        (dead_dir / "train.py").write_text(best.replace("MOMENTUM = 0.0", "MOMENTUM = 0.1"))

        # Resume: a new run continues from the best script and the recorded history.
        server.push(reply("momentum", "MOMENTUM = 0.0  # unused knob\n", "MOMENTUM = 0.5  # unused knob\n"))
        n_requests = len(server.chat_requests())
        again = _run(toy, server, tmp_path, n_trials=2)
        trials = again.study.get_trials()
        n = dead.number
        assert trials[n].user_attrs["status"] == "lost" and trials[n].state == optuna.trial.TrialState.FAIL
        if "retry_of" in trials[n + 1].user_attrs:  # the study queued a retry: the lost edit ran again
            assert f"retry of lost trial {n}" in trials[n + 1].user_attrs[DESCRIPTION_ATTR]
            assert trials[n + 1].user_attrs["config"]["MOMENTUM"] == 0.1
            assert trials[n + 1].user_attrs["status"] == "ok"
        edit = next(t for t in trials if t.user_attrs.get(DESCRIPTION_ATTR) == "momentum")
        assert edit.params == {"LR": 0.5, "MOMENTUM": 0.5} and edit.user_attrs[DESCRIPTION_ATTR] == "momentum"
        prompt = server.chat_requests()[n_requests]["body"]["messages"][-1]["content"]
        assert "LR = 0.5  # step size" in prompt and "[KEPT] #1 raise the LR" in prompt
        assert "[REJECTED] #3 edit text that is not there" in prompt
        assert f"{trials[1].value:.6f}" in prompt
        assert "sk-secret" not in json.dumps([t.user_attrs for t in trials])


@pytest.mark.slow
def test_stops_after_too_many_rejected_edits(toy, tmp_path):
    with FakeLLMServer(responder=lambda body: {"content": "I cannot help with that."}) as server:
        result = _run(toy, server, tmp_path, n_trials=20, max_rejected_in_row=3)
    assert "3 edits in a row were rejected" in result.stop_reason
    assert len(result.study.trials) == 4


@pytest.mark.slow
def test_trackers_and_callbacks_get_every_agent_code_trial(toy, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    seen = []
    with FakeLLMServer() as server:
        server.push(reply("raise the LR", "LR = 0.1  # step size\n", "LR = 0.5  # step size\n"),
                    reply("broken", "MOMENTUM = 0.0  # unused knob\n", "MOMENTUM = (0.0\n"))
        result = _run(toy, server, tmp_path, n_trials=3, tracking={"mlflow": uri},
                      callbacks=[lambda study, trial: seen.append((trial.number, trial.state))])
    trials = result.study.trials
    assert [n for n, _ in seen] == [t.number for t in trials] and len(trials) == 3
    assert all(state.is_finished() for _, state in seen)  # told after the trial was recorded
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("centaur").experiment_id])
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags),
                      key=lambda r: int(r.data.tags["centaur.trial"]))  # fmt: skip
    assert [r.data.tags["centaur.decision"] for r in children] == [t.user_attrs[DECISION_ATTR] for t in trials]
    assert [r.data.tags["centaur.status"] for r in children] == [t.user_attrs["status"] for t in trials]


def test_bad_options(toy, tmp_path):
    with FakeLLMServer() as server, pytest.raises(MethodError, match="unknown option"):
        _run(toy, server, tmp_path, n_trials=1, frobnicate=1)
    with FakeLLMServer() as server, pytest.raises(MethodError, match="neither functions nor constants"):
        _run(toy, server, tmp_path, n_trials=1, protect="nothing_like_this")


def test_prompt_fits_a_small_context(gpt):
    from centaur.agentcode.prompt import build_prompt
    from centaur.llm import TokenCounter

    source, protection = gpt
    counter = TokenCounter()
    prompt = build_prompt(script=source, script_name="train.py", task_description="GPT", metric="val_bpb",
                          best_value=2.2, history=[], protected=protection.describe(),
                          protected_functions=sorted(protection.functions),
                          count_tokens=lambda t: counter.count_messages([{"content": t}]), budget_tokens=2500)
    assert counter.count_messages([{"content": prompt}]) <= 2500
    assert "DEPTH = 2" in prompt and "evaluate_bpb: " in prompt and "not shown" in prompt


# -- the real local model ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.llm
def test_real_smollm2_three_trials_on_the_bundled_task(tmp_path):
    from centaur.llm.local import LLMSetupError, check_llama_cpp, default_gguf

    try:
        check_llama_cpp()
        gguf = default_gguf()
    except LLMSetupError as e:
        pytest.skip(f"local LLM not available: {e}")
    task = tmp_path / "gpt"
    task.mkdir()
    for name in ("prepare.py", "centaur.toml"):
        shutil.copy(BUNDLED_TASK.parent / name, task / name)
    (task / "train.py").write_text(BUNDLED_TASK.read_text().replace("TIME_BUDGET = 40", "TIME_BUDGET = 3"))
    llm = LLMSettings(gguf=str(gguf), threads=1, context_tokens=2432, max_tokens=160, timeout_s=120)
    result = tune(task / "train.py", method="agent-code", n_trials=3, budget=None, run_dir=tmp_path / "runs",
                  llm=llm, method_options={"max_tokens": 160, "trust_script_metric": True})
    trials = result.study.get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    assert trials[0].user_attrs[DECISION_ATTR] == "baseline" and trials[0].user_attrs["status"] == "ok"
    assert all(t.user_attrs[DECISION_ATTR] in ("kept", "reverted", "rejected", "failed") for t in trials[1:])
    assert all(t.user_attrs["llm_calls"] == 1 for t in trials[1:])
    print(textwrap.indent("\n".join(
        f"#{t.number} {t.user_attrs[DECISION_ATTR]}: {t.user_attrs.get(DESCRIPTION_ATTR)} | "
        f"{t.user_attrs.get(REASON_ATTR, '')[:150]} | wall {t.user_attrs['wall_s']:.1f}s, "
        f"llm {t.user_attrs.get('llm_seconds', 0):.1f}s | {t.user_attrs.get('llm_reply', '')[:120]!r}"
        for t in trials), "  "))


@pytest.mark.slow
def test_cli_runs_and_resumes_agent_code(toy, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from centaur.cli import app

    with FakeLLMServer() as server:
        monkeypatch.setenv("CENTAUR_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("CENTAUR_LLM_MODEL", "fake-model")
        server.push(reply("raise the LR", "LR = 0.1  # step size\n", "LR = 0.3  # step size\n"))
        args = ["tune", str(toy), "--method", "agent-code", "--run-dir", str(tmp_path / "runs"),
                "-o", "trust_script_metric=true", "--n-trials", "2"]
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        server.push(reply("raise it more", "LR = 0.3  # step size\n", "LR = 0.6  # step size\n"))
        second = CliRunner().invoke(app, [*args[:-1], "1"])
        assert second.exit_code == 0, second.output
    storage = default_storage_url(tmp_path / "runs")
    names = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=names[0], storage=storage)
    assert [t.user_attrs[DECISION_ATTR] for t in study.trials] == ["baseline", "kept", "kept"]
    assert "LR = 0.6" in study.user_attrs[BEST_SOURCE_ATTR]
    out = tmp_path / "best.py"
    shown = CliRunner().invoke(app, ["best", "--study-name", names[0], "--run-dir", str(tmp_path / "runs"),
                                     "--script", str(toy), "-o", str(out)])
    assert shown.exit_code == 0, shown.output
    assert out.read_text() == study.user_attrs[BEST_SOURCE_ATTR]


def test_agent_code_refuses_several_workers(toy, tmp_path):
    import inspect

    if "workers" not in inspect.signature(tune).parameters:
        pytest.skip("tune has no workers option in this checkout")
    with pytest.raises(ValueError, match="agent-code"):
        tune(toy, method="agent-code", n_trials=1, run_dir=tmp_path, workers=2)


@pytest.mark.slow
def test_writes_to_the_task_files_are_undone_and_flagged(toy, tmp_path):
    with FakeLLMServer() as server:
        server.push(reply("sneaky", "    train, val = load_split()\n",
                          "    train, val = load_split()\n"
                          "    task_dir = os.environ['PYTHONPATH'].split(os.pathsep)[-1]\n"
                          "    with open(os.path.join(task_dir, 'prepare.py'), 'a') as f:\n"
                          "        f.write('\\n# edited by the agent\\n')\n"))
        # Outside the sandbox the write happens and is undone; inside it the task folder is read-only.
        result = _run(toy, server, tmp_path, n_trials=2, unsafe=True)
    trial = result.study.trials[1]
    assert trial.user_attrs[DECISION_ATTR] == "rejected" and trial.user_attrs["status"] == "invalid"
    assert "wrote prepare.py" in trial.user_attrs[REASON_ATTR]
    assert (toy.parent / "prepare.py").read_text() == TOY_PREPARE


def test_bundled_task_protects_its_run_settings(tmp_path):
    from centaur.agentcode.loop import AgentOptions, CodeAgent

    task = resolve_task("gpt")
    options = AgentOptions.parse(task.config.methods["agent-code"])
    agent = CodeAgent(task, optuna.create_study(), client=None, run_dir=tmp_path, options=options)
    assert {"_settings", "evaluate_bpb"} <= agent.protection.functions
    source = BUNDLED_TASK.read_text()
    sneaky = edited(source, '"uncounted_steps": 10 if scale == "gpu" else 2', '"uncounted_steps": 50')
    assert "_settings" in " ".join(check_source(source, sneaky, agent.protection))
