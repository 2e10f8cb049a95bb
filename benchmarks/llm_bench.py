"""Cost of the LLM methods per suggestion with the local default model (or any configured endpoint).

For each method and history size (default 20 and 100 finished trials, synthetic, with the attributes
the study loop writes), a few suggestions are timed: seconds, LLM calls, prompt tokens per trial.

    python benchmarks/llm_bench.py --threads 2 --suggestions 3 --out llm_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from centaur.llm import LLMClient, resolve_settings
from centaur.methods.base import MethodContext, create_sampler
from centaur.space import SearchSpace, reference_space

TASK = (
    "Pretraining of a small GPT language model (Karpathy's autoresearch train.py) for a fixed budget of 300 s "
    "of training per trial. Objective: minimize val_bpb. Hardware: one NVIDIA H100 with an enforced 76 GiB "
    "memory cap. Configurations that exceed the cap fail with out-of-memory and waste budget."
)


def synthetic_result(space: SearchSpace, config: dict[str, Any]) -> tuple[str, float]:
    """A plausible outcome: constraint violations are invalid, big models OOM, else a smooth val_bpb."""
    if space.violations(config):
        return "invalid", 100.0
    if config["DEPTH"] * config["DEVICE_BATCH_SIZE"] * config["ASPECT_RATIO"] > 24 * 128 * 96:
        return "oom", 100.0
    value = 0.975 + 0.01 * (math.log10(config["MATRIX_LR"] / 0.04)) ** 2 + 0.002 * abs(config["DEPTH"] - 10)
    return "ok", value + 0.01 * (config["WARMDOWN_RATIO"] - 0.5) ** 2


def record(study: optuna.Study, space: SearchSpace, config: dict[str, Any], source: str,
           rng: random.Random) -> None:
    status, value = synthetic_result(space, config)
    cost = 300.0 + rng.random() * 20 if status == "ok" else 20.0 + rng.random() * 60
    study.add_trial(optuna.trial.create_trial(
        params=space.encode(config), distributions=space.distributions(), value=value,
        user_attrs={"config": config, "status": status, "cost_s": cost, "wall_s": cost + 15,
                    "proposal_source": source},
    ))


def prefill(study: optuna.Study, space: SearchSpace, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        config = {}
        for p in space:
            if p.values is not None:
                config[p.name] = rng.choice(p.values)
            elif p.kind == "int":
                config[p.name] = rng.randint(int(p.low), int(p.high))
            elif p.log:
                config[p.name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
            else:
                config[p.name] = rng.uniform(p.low, p.high)
        record(study, space, config, "random", rng)


def bench(method: str, n_history: int, suggestions: int, client: LLMClient, options: dict[str, Any],
          seed: int) -> dict[str, Any]:
    space = reference_space()
    ctx = MethodContext(space=space, seed=seed, options={"metric": "val_bpb", "fallback": "random", **options},
                        task_description=TASK, llm=client)
    study = optuna.create_study(sampler=create_sampler(method, ctx))
    prefill(study, space, n_history, seed)
    rows = []
    for _ in range(suggestions):
        trial = study.ask()
        start = time.perf_counter()
        config = space.suggest(trial)
        seconds = time.perf_counter() - start
        a = study.trials[trial.number].user_attrs
        calls = [c for c in client.calls if c.labels.get("trial") == trial.number and c.labels.get("method") == method]
        rows.append({
            "trial": trial.number, "seconds": seconds, "source": a["proposal_source"], "llm_calls": a["llm_calls"],
            "llm_seconds": a["llm_seconds"], "prompt_tokens": a["llm_prompt_tokens"],
            "max_prompt_tokens_per_call": max((c.prompt_tokens or 0 for c in calls), default=0),
            "rows_omitted": a["llm_detail"].get("rows_omitted"), "error": a["llm_error"],
        })
        status, value = synthetic_result(space, config)
        trial.set_user_attr("status", status)  # what the study loop writes before telling
        trial.set_user_attr("config", config)
        study.tell(trial, value)
    return {
        "method": method, "history": n_history, "suggestions": rows,
        "seconds_per_suggestion": statistics.mean(r["seconds"] for r in rows),
        "llm_calls_per_trial": statistics.mean(r["llm_calls"] for r in rows),
        "prompt_tokens_per_trial": statistics.mean(r["prompt_tokens"] for r in rows),
        "max_prompt_tokens_per_call": max(r["max_prompt_tokens_per_call"] for r in rows),
        "fallbacks": sum(r["source"].startswith("llm-fallback") for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="agent-hps,llambo,llambo-hub")
    ap.add_argument("--history", default="20,100", help="finished trials before timing (comma-separated)")
    ap.add_argument("--suggestions", type=int, default=3, help="suggestions timed per method and history size")
    ap.add_argument("--threads", type=int, default=2, help="local server threads")
    ap.add_argument("--context", type=int, default=8192, help="context_tokens")
    ap.add_argument("--n-candidates", type=int, default=None, help="llambo n_candidates (default: the method's)")
    ap.add_argument("--n-samples", type=int, default=None, help="llambo n_samples (default: the method's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = resolve_settings({"threads": args.threads, "context_tokens": args.context})
    options = {k: v for k, v in (("n_candidates", args.n_candidates), ("n_samples", args.n_samples)) if v}
    log_dir = (args.out.parent if args.out else Path("."))
    results = []
    with LLMClient(settings, log_path=log_dir / "llm_bench_calls.jsonl") as client:
        print(f"endpoint: {settings.base_url or 'local llama.cpp server'}; threads {args.threads}; "
              f"context {args.context}", file=sys.stderr)
        for method in args.methods.split(","):
            for n in (int(x) for x in args.history.split(",")):
                r = bench(method, n, args.suggestions, client, options, args.seed)
                results.append(r)
                print(f"{method:11s} history {n:4d}: {r['seconds_per_suggestion']:7.2f} s/suggestion, "
                      f"{r['llm_calls_per_trial']:6.1f} calls/trial, {r['prompt_tokens_per_trial']:8.0f} prompt "
                      f"tokens/trial, max {r['max_prompt_tokens_per_call']} per call, {r['fallbacks']} fallbacks",
                      flush=True)
        model = client.model
    if args.out:
        args.out.write_text(json.dumps({"model": model, "threads": args.threads, "context_tokens": args.context,
                                        "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
