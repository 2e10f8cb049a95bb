"""What checking the value that ran costs per trial (centaur.runner.verify): the same trivial script run
through the launcher with and without `--verify`, interleaved, for each source that the trial's process
observes; prints the median wall seconds of both and their difference.

    python benchmarks/verify_cost.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from centaur.runner.process import run_script
from centaur.runner.verify import VerificationPlan, judge, read_observations

SCRIPTS = {
    "constants": ("LEARNING_RATE = 0.01\nDEPTH = 4\nprint(f'val_bpb: {1 + LEARNING_RATE}')\n",
                  {"globals": {"LEARNING_RATE": 0.01, "DEPTH": 4}}, []),
    "argparse": (textwrap.dedent("""
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.01)
        args = p.parse_args()
        print(f"val_bpb: {1 + args.lr}")
    """), {"arguments": {"lr": 0.02}}, ["--lr=0.02"]),
    "dataclass": (textwrap.dedent("""
        from dataclasses import dataclass
        @dataclass
        class Hyperparameters:
            learning_rate: float = 0.01
        args = Hyperparameters()
        print(f"val_bpb: {1 + args.learning_rate}")
    """), {"instances": {"Hyperparameters": {"learning_rate": 0.01}},
           "instance_kinds": {"Hyperparameters": "dataclass"}}, []),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    repeats = parser.parse_args().repeats
    print(f"{'source':10} {'plain s':>9} {'verified s':>11} {'extra ms':>9} {'judge ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for source, (text, spec, args) in SCRIPTS.items():
            folder = Path(tmp) / source
            folder.mkdir()
            script = folder / "train.py"
            script.write_text(text)
            plan = VerificationPlan(spec=spec)
            plain, checked, judged = [], [], []
            for _ in range(repeats):
                for verify in (False, True):
                    spec_path = plan.write(folder) if verify else None
                    start = time.perf_counter()
                    proc = run_script(script, cwd=folder, log_path=folder / "trial.log", timeout_s=60, args=args,
                                      verify_spec=spec_path)  # fmt: skip
                    (checked if verify else plain).append(time.perf_counter() - start)
                    assert proc.returncode == 0, proc.output
                    if verify:
                        start = time.perf_counter()
                        verdict = judge(plan, read_observations(folder))
                        judged.append(time.perf_counter() - start)
                        assert verdict.state == "verified", verdict
            p, c = statistics.median(plain), statistics.median(checked)
            print(f"{source:10} {p:9.3f} {c:11.3f} {1000 * (c - p):9.1f} {1000 * statistics.median(judged):9.2f}")


if __name__ == "__main__":
    main()
