"""Overheads of agent-code that do not depend on the model: the AST integrity check and the prompt
on the bundled task's train.py, and the cost of the isolated run (scrubbed environment, limits, new
network namespace) against a plain trial subprocess.

    python benchmarks/agent_code_bench.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from centaur.agentcode.integrity import Protection, check_source
from centaur.agentcode.prompt import build_prompt
from centaur.agentcode.sandbox import network_isolation, run_isolated
from centaur.api import BUNDLED_TASK, resolve_task
from centaur.llm import TokenCounter
from centaur.runner.process import run_script


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="subprocess runs per variant")
    args = ap.parse_args()

    task = resolve_task("gpt")
    source = BUNDLED_TASK.read_text()
    protection = Protection.for_script(source, metric="val_bpb", constants=task.config.exclude,
                                       modules={"prepare"}, time_budget=40)
    edited = source.replace("DEPTH = 2  #", "DEPTH = 3  #")
    check_s = timed(lambda: check_source(source, edited, protection), 20)
    counter = TokenCounter()
    for budget in (8192 - 1024, 4096 - 512):
        prompt_s = timed(lambda b=budget: build_prompt(
            script=source, script_name="train.py", task_description=task.describe(), metric="val_bpb",
            best_value=2.2, history=[], protected=protection.describe(),
            protected_functions=sorted(protection.functions),
            count_tokens=lambda t: counter.count_messages([{"content": t}]), budget_tokens=b), 5)
        print(f"prompt for a {budget}-token budget: {prompt_s * 1000:.1f} ms")
    print(f"AST integrity check of train.py ({len(source.splitlines())} lines): {check_s * 1000:.1f} ms")

    prefix, warning = network_isolation()
    print(f"network isolation: {' '.join(prefix) or 'none'}{f' ({warning})' if warning else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial"
        trial.mkdir()
        script = trial / "probe.py"
        script.write_text("print('val_bpb: 1.0')\n")
        plain = timed(lambda: run_script(script, cwd=trial, log_path=trial / "plain.log", timeout_s=60), args.runs)
        isolated = timed(lambda: run_isolated(script, task_dir=BUNDLED_TASK.parent, log_path=trial / "iso.log",
                                              timeout_s=60), args.runs)
    print(f"trivial trial subprocess: plain {plain:.3f} s, isolated {isolated:.3f} s "
          f"(+{(isolated - plain) * 1000:.0f} ms per trial, median of {args.runs})")


if __name__ == "__main__":
    main()
