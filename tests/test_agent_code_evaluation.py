"""agent-code on the bundled GPT task with the metric computed outside the edited program (issue #18
item 2, centaur/agentcode/evaluator.py): the training run hands its model over at the protected
evaluate_bpb, a sandboxed model process answers forward passes, the tuner computes val_bpb itself and
checks causality and determinism."""

from __future__ import annotations

import ast
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from fake_llm_server import FakeLLMServer

from centaur.agentcode.evaluator import (
    MODEL_FILE,
    EvalResult,
    declared_evaluation,
    nats_of,
    score,
    validation_windows,
)
from centaur.agentcode.harness import HANDOVER, handover_stub
from centaur.agentcode.heldout import build_split
from centaur.agentcode.loop import DECISION_ATTR, REASON_ATTR, AgentOptions, check_can_run, declares_evaluation
from centaur.agentcode.scorer import load_model
from centaur.api import BUNDLED_TASK, resolve_task, tune
from centaur.llm import LLMSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)
SDPA = "        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)\n"
TOY = "def evaluate(w, val):\n    return 0.0\n"


def reply(description: str, search: str, replace: str) -> dict:
    return {"content": f"DESCRIPTION: {description}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"}


def small_task(dest: Path) -> Path:
    dest.mkdir()
    for name in ("prepare.py", "centaur.toml"):
        shutil.copy(BUNDLED_TASK.parent / name, dest / name)
    source = BUNDLED_TASK.read_text().replace("TIME_BUDGET = 40", "TIME_BUDGET = 1")
    # A quarter of the default batch: a step fits the task's step guard (TIME_BUDGET / 4) on a loaded core.
    source = source.replace("TOTAL_BATCH_SIZE = 2**12", "TOTAL_BATCH_SIZE = 2**10")
    source = source.replace("DEVICE_BATCH_SIZE = 16 ", "DEVICE_BATCH_SIZE = 4 ")
    (dest / "train.py").write_text(source.replace("EVAL_BYTES = 2**17", "EVAL_BYTES = 2**12"))
    return dest / "train.py"


def test_the_bundled_task_declares_its_evaluation(tmp_path):
    assert declares_evaluation(resolve_task("gpt"))
    spec = declared_evaluation(BUNDLED_TASK)
    assert spec is not None and spec.settings({}) == (256, 2**17)
    assert spec.settings({"CENTAUR_GPT_SCALE": "gpu"}) == (2048, 2**18)
    # The bundled task runs without trust_script_metric; a changed evaluate_bpb is not the declared one.
    check_can_run(AgentOptions.parse({}), resolve_task("gpt"))
    other = small_task(tmp_path / "gpt")
    assert declared_evaluation(other).settings({}) == (256, 2**12)
    other.write_text(other.read_text().replace("    n_seq = EVAL_BYTES // MAX_SEQ_LEN", "    n_seq = 4", 1))
    assert declared_evaluation(other) is None
    (tmp_path / "toy.py").write_text(TOY)
    assert declared_evaluation(tmp_path / "toy.py") is None


def test_handover_stub_replaces_the_protected_body():
    tree = ast.parse(BUNDLED_TASK.read_text())
    assert handover_stub(tree, "evaluate_bpb")
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "evaluate_bpb")
    assert ast.unparse(fn.body[0]) == f"return {HANDOVER}(model)" and len(fn.body) == 1
    assert not handover_stub(ast.parse(TOY), "evaluate_bpb")


class _Model:
    """A stand-in for the model process: logits from a fixed table, optionally looking ahead."""

    def __init__(self, peek: bool = False, drift: bool = False) -> None:
        self.table = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
        self.peek, self.drift, self.calls = peek, drift, 0

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        self.calls += 1
        src = np.roll(tokens, -1, axis=1) if self.peek else tokens
        out = self.table[src]
        return out * (1 + 0.01 * self.calls) if self.drift else out  # a changing temperature: state across calls

    def close(self) -> None:
        pass


def test_parent_scores_and_checks_causality_and_determinism():
    val = np.random.default_rng(1).integers(0, 256, size=5000).astype(np.uint8)
    windows = validation_windows(val, 32, 1024)
    honest: EvalResult = score(_Model(), windows, val, batch=8)
    table = _Model().table
    expected = nats_of(table[windows[:, :-1]], windows[:, 1:]) / windows[:, 1:].size / math.log(2)
    assert honest.tampering == [] and honest.value == pytest.approx(expected, rel=1e-12)
    assert honest.max_causal_diff == 0 and honest.max_repeat_diff == 0 and honest.checked_windows >= 16
    assert any("not causal" in t for t in score(_Model(peek=True), windows, val).tampering)
    drift = score(_Model(drift=True), windows, val).tampering
    assert score(_Model(), windows, val).tampering == []  # a constant added to every logit changes nothing
    assert any("not deterministic" in t for t in drift) and any("not causal" in t for t in drift)
    torch = pytest.importorskip("torch")
    logits = torch.randn(4, 7, 256)
    targets = torch.randint(0, 256, (4, 7))
    want = torch.nn.functional.cross_entropy(logits.view(-1, 256), targets.view(-1), reduction="sum").item()
    assert nats_of(logits.numpy(), targets.numpy()) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_metric_is_computed_outside_the_edited_program(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTAUR_THREADS", "1")
    script = small_task(tmp_path / "gpt")
    with FakeLLMServer() as server:
        server.push(
            reply("higher matrix LR", "MATRIX_LR = 0.04  # Muon LR of the 2-D block matrices\n",
                  "MATRIX_LR = 0.08  # Muon LR of the 2-D block matrices\n"),  # 1 honest
            reply("full attention", SDPA, SDPA.replace("attn_mask=mask, is_causal=mask is None",
                                                       "attn_mask=None, is_causal=False")),  # 2 looks ahead
            reply("forge the report", "    model.eval()\n",
                  '    model.eval()\n    print("val_" + "bpb: 0.010000")\n'),  # 3 a forged line is not read
        )
        llm = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, timeout_s=10.0)
        result = tune(script, method="agent-code", n_trials=4, budget=None, run_dir=tmp_path / "runs", llm=llm)
    trials = result.study.get_trials()
    decisions = [t.user_attrs[DECISION_ATTR] for t in trials]
    print([(t.number, t.user_attrs[DECISION_ATTR], t.value, t.user_attrs.get(REASON_ATTR),
            t.user_attrs.get("evaluation_seconds"), t.user_attrs.get("scoring_seconds"), t.user_attrs.get("wall_s"))
           for t in trials])
    assert decisions[0] == "baseline" and trials[0].user_attrs["status"] == "ok"
    assert decisions[1] in ("kept", "reverted") and trials[1].user_attrs["status"] == "ok"
    # (b) the model that looks at the next byte is caught by the parent's causality check.
    assert decisions[2] == "rejected" and "not causal" in trials[2].user_attrs[REASON_ATTR]
    # (c) the forged line changes nothing: the parent's own value is recorded.
    assert trials[3].user_attrs["status"] == "ok" and trials[3].value > 1.0
    # (a) the parent's value is the in-process evaluate_bpb of the same saved model on the held-out split.
    out = tmp_path / "runs" / result.study.study_name / "trials" / "00001"
    main = sys.modules["__main__"]
    monkeypatch.syspath_prepend(str(script.parent))
    try:
        model = load_model(out / "train.py", out / "out" / MODEL_FILE)
        module = sys.modules["__main__"]
        held_out = build_split(Path("unused"), "stdlib").held_out
        import torch

        autocast = torch.autocast(device_type="cpu", enabled=False)
        inside = module.evaluate_bpb(model, held_out, 16, torch.device("cpu"), autocast)
    finally:
        sys.modules["__main__"] = main
        sys.modules.pop("prepare", None)
    assert trials[1].user_attrs["agent_runs"][0] == pytest.approx(inside, rel=1e-5)
