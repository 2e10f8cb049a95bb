"""Benchmark of the bundled GPT task on this machine: throughput, seed noise, and config spread.

Measures, through the tuner's own trial path (ScriptTask: injected work copy, runner memory cap,
timeout, outcome classification):
  * tokens/s and val_bpb of the default configuration over N seeds (mean, std = noise floor),
  * val_bpb of K random configurations sampled from centaur.toml's ranges (seeded),
  * the spread of the successful ones (std, max - min), spread / noise std, and the OOM share.

Usage: python benchmarks/gpt_task_bench.py [--seeds 5] [--configs 10] [--sample-seed 0] [--json out.json]
It takes roughly (seeds + configs) x 1 minute; run it in the background.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from centaur.space import Param, SearchSpace  # noqa: E402
from centaur.tasks.base import TrialResult  # noqa: E402
from centaur.tasks.script import ScriptTask  # noqa: E402

TRAIN = ROOT / "centaur" / "tasks" / "gpt" / "train.py"


def sample_param(p: Param, rng: random.Random) -> Any:
    """Uniform / log-uniform / random power of two / random choice, as the space declares."""
    if p.kind == "categorical":
        return rng.choice(p.choices)
    if p.kind == "pow2":
        return 2 ** rng.randint(int(math.log2(p.low)), int(math.log2(p.high)))
    if p.log:
        x = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
    else:
        x = rng.uniform(p.low, p.high)
    return min(max(int(round(x)), int(p.low)), int(p.high)) if p.kind == "int" else x


def sample_config(space: SearchSpace, rng: random.Random, tries: int = 10_000) -> dict[str, Any]:
    """A random configuration that satisfies the space's constraints (rejection sampling)."""
    for _ in range(tries):
        config = {p.name: sample_param(p, rng) for p in space}
        if not space.violations(config):
            return config
    raise RuntimeError("no configuration satisfying the constraints found")


def run(task: ScriptTask, config: dict[str, Any], seed: int | None, n: int, run_dir: Path) -> TrialResult:
    # The trial needs both the task directory (prepare.py) and this checkout (the launcher) on its path,
    # whether or not centaur is installed.
    task.extra_env = {"PYTHONPATH": os.pathsep.join([str(TRAIN.parent), str(ROOT)])}
    if seed is not None:
        task.extra_env["CENTAUR_SEED"] = str(seed)
    t0 = time.monotonic()
    result = task.evaluate(config, trial_number=n, run_dir=run_dir)
    m = result.metrics
    value = f"{result.value:.4f}" if result.value is not None else "-"
    print(
        f"  trial {n:2d} seed={seed} {result.status.value:8s} val_bpb={value:>7s} "
        f"steps={m.get('num_steps', float('nan')):.0f} tok/s={m.get('tokens_per_second', float('nan')):.0f} "
        f"rss={m.get('peak_rss_mb', float('nan')):.0f}MB wall={time.monotonic() - t0:.0f}s"
        + (f" error={result.error[:120]}" if result.error else ""),
        flush=True,
    )
    return result


def _load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the default configuration")
    ap.add_argument("--configs", type=int, default=10, help="random configurations")
    ap.add_argument("--sample-seed", type=int, default=0, help="seed of the configuration sampler")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--run-dir", type=Path, help="keep trial logs here (default: a temporary directory)")
    args = ap.parse_args(argv)

    task = ScriptTask.from_script(TRAIN)
    space = task.space
    cap = task.config.runner.memory_cap_bytes
    print(
        f"task {TRAIN} | memory cap {cap / 2**30 if cap else 0:.2f} GiB | timeout {task.trial_timeout_s:.0f}s "
        f"| cpus {len(os.sched_getaffinity(0))} | load {_load():.2f}",
        flush=True,
    )
    print(space.describe(), flush=True)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="gpt_task_bench_"))
    loads = [_load()]
    n = 0

    print(f"\n== default configuration, {args.seeds} seeds", flush=True)
    defaults = space.defaults()
    noise: list[float] = []
    tps: list[float] = []
    for seed in range(args.seeds):
        r = run(task, defaults, seed, n, run_dir)
        n += 1
        loads.append(_load())
        if r.value is not None:
            noise.append(r.value)
            tps.append(r.metrics.get("tokens_per_second", float("nan")))

    print(f"\n== {args.configs} random configurations (sampler seed {args.sample_seed})", flush=True)
    rng = random.Random(args.sample_seed)
    randoms: list[dict[str, Any]] = []
    for _ in range(args.configs):
        config = sample_config(space, rng)
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()))
        r = run(task, config, None, n, run_dir)
        n += 1
        loads.append(_load())
        randoms.append({"config": config, "status": r.status.value, "val_bpb": r.value, "metrics": r.metrics})

    ok = [r["val_bpb"] for r in randoms if r["val_bpb"] is not None]
    noise_mean = statistics.fmean(noise) if noise else float("nan")
    noise_std = statistics.stdev(noise) if len(noise) > 1 else float("nan")
    spread_std = statistics.stdev(ok) if len(ok) > 1 else float("nan")
    spread_range = max(ok) - min(ok) if ok else float("nan")
    oom_share = sum(r["status"] == "oom" for r in randoms) / max(1, len(randoms))
    summary = {
        "default_tokens_per_second": statistics.fmean(tps) if tps else float("nan"),
        "default_val_bpb_mean": noise_mean,
        "default_val_bpb_std": noise_std,
        "default_val_bpb": noise,
        "random_ok": len(ok),
        "random_status": {s: sum(r["status"] == s for r in randoms) for s in {r["status"] for r in randoms}},
        "random_val_bpb_std": spread_std,
        "random_val_bpb_range": spread_range,
        "random_val_bpb_min": min(ok) if ok else float("nan"),
        "spread_std_over_noise_std": spread_std / noise_std if noise_std > 0 else float("inf"),
        "spread_range_over_noise_std": spread_range / noise_std if noise_std > 0 else float("inf"),
        "oom_share": oom_share,
        "load_avg_max": max(loads),
        "run_dir": str(run_dir),
    }
    print("\n== summary")
    for key, value in summary.items():
        if isinstance(value, float):
            print(f"{key:32s} {value:.4f}")
        else:
            print(f"{key:32s} {value}")
    if max(loads) > len(os.sched_getaffinity(0)) + 0.5:
        print("warning: the machine was busy (load average above the core count); timings and noise are inflated")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "random": randoms}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
