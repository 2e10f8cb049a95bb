"""Does pruning pay on the bundled GPT task? The same compute budget per study, with and without a pruner.

For each method (default tpe, cmaes), pruner (default none and median) and seed, one study of the
bundled task (`centaur tune gpt`) with `--budget`, all in one SQLite storage under --dir (a rerun
resumes: finished studies are read, not run again). Per study it reports the trials run, how many were
pruned, the best val_bpb, and the share of the budget saved: for every pruned trial, what a full trial
costs (the median cost of the study's successful trials) minus what the pruned one cost, over the
budget used. Then per (method, pruner) the mean and spread over seeds, as a Markdown table (and JSON).

Usage:
  python benchmarks/pruning_bench.py --budget 6m --seeds 0-2 --methods tpe,cmaes --pruners none,median \\
      --pruner-warmup 10s --pruner-startup-trials 3 --dir pruning-bench --json pruning-bench/result.json
Cost: budget x seeds x methods x pruners of training, plus ~15% start-up and evaluation; the line above
is about 70 min on a CPU. A smoke run: --budget 3m --seeds 0 --methods tpe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import centaur  # noqa: E402
from centaur.study.pruning import PrunerSettings  # noqa: E402


def seeds_of(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def study_row(study: Any, budget_s: float) -> dict[str, Any]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    ok = [t for t in trials if t.user_attrs.get("status") == "ok" and t.value is not None]
    pruned = [t for t in trials if t.user_attrs.get("status") == "pruned"]
    full = statistics.median(t.user_attrs["cost_s"] for t in ok) if ok else None
    used = sum(float(t.user_attrs.get("cost_s", 0.0)) for t in trials)
    saved = sum(max(0.0, full - float(t.user_attrs["cost_s"])) for t in pruned) if full is not None else 0.0
    return {
        "trials": len(trials),
        "ok": len(ok),
        "pruned": len(pruned),
        "failed": len(trials) - len(ok) - len(pruned),
        "best": min((t.value for t in ok), default=None),
        "used_s": used,
        "budget_s": budget_s,
        "saved_share": saved / used if used else 0.0,
        "pruned_at": sorted(int(t.user_attrs.get("pruned_step", -1)) for t in pruned),
    }


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="6m")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--methods", default="tpe,cmaes")
    ap.add_argument("--pruners", default="none,median")
    ap.add_argument("--pruner-warmup", default="10s", help="for median/percentile/wilcoxon")
    ap.add_argument("--pruner-startup-trials", type=int, default=3, help="for median/percentile")
    ap.add_argument("--pruner-min-resource", default="5s", help="for successive-halving/hyperband")
    ap.add_argument("--dir", type=Path, default=Path("pruning-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(args.dir / 'bench.db').resolve()}"
    rows = []
    for method in args.methods.split(","):
        for kind in args.pruners.split(","):
            settings = {"kind": kind}
            if kind in ("median", "percentile", "wilcoxon"):
                settings["warmup"] = args.pruner_warmup
            if kind in ("median", "percentile"):
                settings["startup_trials"] = args.pruner_startup_trials
            if kind in ("successive-halving", "hyperband"):
                settings["min_resource"] = args.pruner_min_resource
            pruner = PrunerSettings.parse(settings.pop("kind"), **settings)
            for seed in seeds_of(args.seeds):
                name = f"gpt-{method}-{kind}-seed{seed}"
                t0 = time.monotonic()
                result = centaur.tune("gpt", method=method, budget=args.budget, seed=seed, storage=storage,
                                      study_name=name, run_dir=args.dir, pruner=pruner, keep_going=True)
                row = {"method": method, "pruner": pruner.describe(), "kind": kind, "seed": seed,
                       "wall_s": time.monotonic() - t0,
                       **study_row(result.study, result.summary.budget_s or 0.0)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| method | pruner | trials | pruned | best val_bpb | budget saved | seeds |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for kind in args.pruners.split(","):
            group = [r for r in rows if r["method"] == method and r["kind"] == kind]
            print(f"| {method} | {group[0]['pruner']} | {mean_sd([r['trials'] for r in group])} | "
                  f"{mean_sd([r['pruned'] for r in group])} | {mean_sd([r['best'] for r in group])} | "
                  f"{mean_sd([100 * r['saved_share'] for r in group])}% | {len(group)} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
