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
from centaur.agentcode.loop import (
    DECISION_ATTR,
    MARGIN_ATTR,
    NOISE_ATTR,
    NOISE_PAIRS_ATTR,
    REASON_ATTR,
    RULE_ATTR,
    AgentOptions,
    check_can_run,
    declares_evaluation,
    noise_sd,
    same_program,
)
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
    # 2 s and a quarter of the default batch: a step fits a quarter of the budget on a loaded core.
    source = BUNDLED_TASK.read_text().replace("TIME_BUDGET = 40", "TIME_BUDGET = 2")
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


SOFTCAP = "        logits = _SOFTCAP * torch.tanh(logits / _SOFTCAP)\n"
AFTER_LOOP = "    gc.enable()\n    model.eval()\n"
EXTRA_TRAINING = """\
    extra_end = time.perf_counter() + 10  # on past the budget, into the grace window
    while time.perf_counter() < extra_end:
        with autocast:
            loss = step_model(x, y)
        loss.backward()
        adam.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        x, y = batches.next()
"""


@pytest.mark.slow
def test_metric_is_computed_outside_the_edited_program(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTAUR_THREADS", "1")
    script = small_task(tmp_path / "gpt")
    with FakeLLMServer() as server:
        server.push(
            reply("higher matrix LR", "MATRIX_LR = 0.04  # Muon LR of the 2-D block matrices\n",
                  "MATRIX_LR = 0.08  # Muon LR of the 2-D block matrices\n"),  # 1 honest
            {"content": reply("full attention, and never the control bytes", SDPA, SDPA.replace(
                "attn_mask=mask, is_causal=mask is None", "attn_mask=None, is_causal=False"))["content"]
             + reply("", SOFTCAP, SOFTCAP + "        logits[..., :9] = -1000.0\n")["content"].split("\n", 1)[1]},
            # 2 looks ahead, and a large negative logit on bytes that never occur (the old tolerance grew with it)
            reply("forge the report", "    model.eval()\n",
                  '    model.eval()\n    print("val_" + "bpb: 0.010000")\n'),  # 3 a forged line is not read
            reply("explain the softcap", SOFTCAP, "        # bound the logits\n" + SOFTCAP),  # 4 comment only
            reply("train a little longer", AFTER_LOOP, EXTRA_TRAINING + AFTER_LOOP),  # 5 past the budget
        )
        llm = LLMSettings(base_url=server.base_url, model="fake-model", max_retries=0, timeout_s=10.0)
        # overrun_s 5 (default 3 s here): room for a loaded machine's start-up; the extra 10 s still shows.
        result = tune(script, method="agent-code", n_trials=6, budget=None, run_dir=tmp_path / "runs", llm=llm,
                      method_options={"overrun_s": 5})
    trials = result.study.get_trials()
    decisions = [t.user_attrs[DECISION_ATTR] for t in trials]
    print([(t.number, t.user_attrs[DECISION_ATTR], t.value, t.user_attrs.get(REASON_ATTR),
            t.user_attrs.get("evaluation_seconds"), t.user_attrs.get("scoring_seconds"), t.user_attrs.get("wall_s"))
           for t in trials])
    assert decisions[0] == "baseline" and trials[0].user_attrs["status"] == "ok"
    assert decisions[1] in ("kept", "reverted") and trials[1].user_attrs["status"] == "ok"
    # (b) the model that looks ahead is caught by the parent's causality check, its extreme logits notwithstanding.
    assert decisions[2] == "rejected" and "not causal" in trials[2].user_attrs[REASON_ATTR]
    # (c) the forged line changes nothing: the parent's own value is recorded.
    assert trials[3].user_attrs["status"] == "ok" and trials[3].value > 1.0
    # (d) a comment-only edit does not run at all.
    assert decisions[4] == "rejected" and "only comments" in trials[4].user_attrs[REASON_ATTR]
    assert trials[4].user_attrs.get("wall_s", 0) == 0
    # (e) training past the budget is flagged against the baseline's hand-over time.
    assert decisions[5] == "rejected" and "trained past the budget" in trials[5].user_attrs[REASON_ATTR]
    # (f) the noise rule: the baseline ran twice; each decision follows the recorded rule.
    attrs = result.study.user_attrs
    assert len(trials[0].user_attrs["agent_runs"]) == 2 and len(attrs[NOISE_PAIRS_ATTR]) >= 1
    assert attrs[MARGIN_ATTR] >= 2 * attrs[NOISE_ATTR] > 0 and "margin" in attrs[RULE_ATTR]
    for t in (trials[1], trials[3]):
        runs, best = t.user_attrs["agent_runs"], t.user_attrs["agent_improvement"]
        kept = len(runs) == 2 and best > t.user_attrs["agent_margin"]
        assert t.user_attrs[DECISION_ATTR] == ("kept" if kept else "reverted"), t.user_attrs
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


def test_noise_rule_and_same_program():
    assert noise_sd([[3.0, 3.1]]) == pytest.approx(0.1 / math.sqrt(2))
    assert noise_sd([[3.0, 3.1], [2.0, 2.0]]) == pytest.approx(math.sqrt(0.01 / 2 / 2))
    source = BUNDLED_TASK.read_text()
    commented = source.replace(SOFTCAP, "        # bound the logits\n" + SOFTCAP)
    documented = source.replace('    """Linear warm-up, constant,', '    """Warm-up, constant,')
    assert same_program(source, commented) and same_program(source, documented)
    assert not same_program(source, source.replace("_SOFTCAP = 15.0", "_SOFTCAP = 16.0"))
