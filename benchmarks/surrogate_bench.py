"""Benchmark of the surrogate: fit time, evaluation latency, a simulated 24 h study, fidelity, the
code-trials decision and the out-of-support analysis.

    python benchmarks/surrogate_bench.py --trials ../shared/data/paper_trials_seeds01.json [--quick] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from centaur.surrogate.data import DEFAULT_CONFIG, NUMERIC_HPS, WINDOW_PATTERNS, load_trials
from centaur.surrogate.features import LOG_HPS, hp_bounds
from centaur.surrogate.model import SurrogateModel, fit_surrogate
from centaur.surrogate.validate import code_trials_analysis, report_table, support_analysis, validate_surrogate

console = Console(width=210)


def _uniform_configs(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    bounds = hp_bounds()
    out = []
    for _ in range(n):
        c: dict[str, Any] = {}
        for h in NUMERIC_HPS:
            lo, hi = bounds[h]
            u = rng.random()
            c[h] = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if h in LOG_HPS else lo + u * (hi - lo)
        c["WINDOW_PATTERN"] = WINDOW_PATTERNS[int(rng.integers(len(WINDOW_PATTERNS)))]
        out.append(c)
    return out


def _ms(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean())}


def bench_latency(model: SurrogateModel, n: int = 1000) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    configs = _uniform_configs(n, rng)
    model.evaluate(configs[0], rng=rng)
    single = []
    for c in configs:
        t = time.perf_counter()
        model.evaluate(c, rng=rng)
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.evaluate_batch(configs, rng=rng)
    batch = (time.perf_counter() - t) / n
    return {"single": _ms(single), "batch_per_eval_ms": batch * 1e3, "n": n}


def simulated_study(model: SurrogateModel, budget_s: float = 86_400.0, seed: int = 0) -> dict[str, Any]:
    """Random search through SurrogateTask until the 24 h rule (sum of cost_s) is reached."""
    from centaur.surrogate.task import SurrogateTask

    task = SurrogateTask(model, noise_seed=seed)
    rng = np.random.default_rng(seed)
    spent, n, n_ok, best = 0.0, 0, 0, math.inf
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        while spent < budget_s:
            res = task.evaluate(_uniform_configs(1, rng)[0], trial_number=n, run_dir=Path(d))
            spent += res.cost_s
            n += 1
            if res.value is not None:
                n_ok += 1
                best = min(best, res.value)
    return {"trials": n, "successful": n_ok, "best": best, "seconds": time.perf_counter() - t0}


def exploitation(model: SurrogateModel, slopes: tuple[float, ...] = (0.0, 0.4), seeds: int = 3,
                 generations: int = 60) -> list[dict[str, Any]]:
    """CMA-ES on the noise-free surrogate (OOM -> 2.0): where does it end up, and how far below the
    best observed value? Shows whether an optimizer can exploit the model."""
    from cmaes import CMA

    bounds = hp_bounds()

    def decode(u: np.ndarray, pattern: str) -> dict[str, Any]:
        c: dict[str, Any] = {"WINDOW_PATTERN": pattern}
        for i, h in enumerate(NUMERIC_HPS):
            lo, hi = bounds[h]
            v = float(np.clip(u[i], 0.0, 1.0))
            c[h] = math.exp(math.log(lo) + v * (math.log(hi) - math.log(lo))) if h in LOG_HPS else lo + v * (hi - lo)
        return c

    rows = []
    saved = model.options.ood_slope
    try:
        for slope in slopes:
            model.options.ood_slope = slope
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                best: tuple[float, Any] = (math.inf, None)
                for pattern in ("SSSL", "SSLL", "SLSL"):
                    opt = CMA(mean=np.full(len(NUMERIC_HPS), 0.5), sigma=0.3, seed=seed, population_size=16,
                              bounds=np.array([[0.0, 1.0]] * len(NUMERIC_HPS)))
                    for _ in range(generations):
                        xs = [opt.ask() for _ in range(opt.population_size)]
                        outs = model.evaluate_batch([decode(x, pattern) for x in xs], rng=rng)
                        fs = [o.noise_free if o.feasible else 2.0 for o in outs]
                        opt.tell(list(zip(xs, fs, strict=True)))
                        for f, o in zip(fs, outs, strict=True):
                            if f < best[0]:
                                best = (f, o)
                o = best[1]
                rows.append({"ood_slope": slope, "seed": seed, "best_noise_free": best[0],
                             "distance": o.distance_to_data, "in_support": o.in_support, "penalty": o.penalty})
    finally:
        model.options.ood_slope = saved
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", default="../shared/data/paper_trials_seeds01.json")
    ap.add_argument("--quick", action="store_true", help="skip leave-one-method-out and the slow analyses")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = ap.parse_args()
    results: dict[str, Any] = {}

    df = load_trials(args.trials)
    t = time.perf_counter()
    model = fit_surrogate(df)
    results["fit_seconds"] = time.perf_counter() - t
    console.print(f"[bold]fit[/bold]: {results['fit_seconds']:.2f} s on {model.meta['n_trials']} trials "
                  f"({model.options.n_models} x {model.options.n_estimators} trees, 1 thread)")
    d = model.evaluate(DEFAULT_CONFIG, rng=np.random.default_rng(0))
    console.print(f"defaults: noise-free {d.noise_free:.4f}, feasible {d.feasible}; best observed "
                  f"{model.meta['best_observed']:.4f}; support threshold {model.support_threshold:.3f}")

    lat = bench_latency(model)
    results["latency"] = lat
    console.print(f"[bold]latency[/bold]: single evaluate median {lat['single']['median_ms']:.3f} ms "
                  f"(p90 {lat['single']['p90_ms']:.3f}), batch {lat['batch_per_eval_ms']:.3f} ms/eval")
    st = simulated_study(model)
    results["study"] = st
    console.print(f"[bold]simulated 24 h random search[/bold] via SurrogateTask: {st['trials']} trials "
                  f"({st['successful']} ok), best {st['best']:.4f}, {st['seconds']:.2f} s")

    rng = np.random.default_rng(1)
    outs = model.evaluate_batch(_uniform_configs(20_000, rng), rng=rng)
    feas = np.array([o.feasible for o in outs])
    ins = np.array([o.in_support for o in outs])
    results["uniform"] = {"feasible": float(feas.mean()), "out_of_support": float((~ins).mean()),
                          "feasible_out_of_support": float((~ins[feas]).mean())}
    console.print(f"uniform configs: {feas.mean():.1%} feasible, {(~ins).mean():.1%} out of support "
                  f"({(~ins[feas]).mean():.1%} of the feasible ones)")

    say = lambda s: console.print(f"  [dim]{s}[/dim]")  # noqa: E731
    t = time.perf_counter()
    rep = validate_surrogate(args.trials, methods=not args.quick, progress=say)
    results["validation"] = rep
    results["validation_seconds"] = time.perf_counter() - t
    console.print(report_table(rep))
    n = rep["noise"]
    console.print(f"noise: {n['groups']} repeat groups ({n['trials']} trials), sd median {n['median_sd']:.2e}, "
                  f"mean {n['mean_sd']:.2e}, pooled {n['pooled_sd']:.2e}")
    nt = Table(title="noise by level (median sd of exact repeats)")
    for c in ("val_bpb from", "to", "groups", "median sd", "pooled sd"):
        nt.add_column(c, justify="right")
    for b in n["per_bin"]:
        nt.add_row(f"{b['lo']}", f"{b['hi']}", str(b["groups"]), f"{b['median_sd']:.2e}", f"{b['pooled_sd']:.2e}")
    console.print(nt)

    if not args.quick:
        code = code_trials_analysis(args.trials, progress=say)
        results["code_trials"] = code
        console.print("[bold]Karpathy Agent (Code) trials[/bold]:", json.dumps(code, indent=1))
        sup = support_analysis(args.trials, progress=say)
        results["support"] = sup
        stbl = Table(title=f"held-out error vs distance/threshold (LS slope beyond threshold: "
                     f"{sup['ls_slope_beyond_threshold']:.3f} over {sup['n_out']} points)")
        for c in ("distance/threshold", "n", "mean residual", "MAE", "n pred<0.99", "mean res pred<0.99"):
            stbl.add_column(c, justify="right")
        for b in sup["bins"]:
            stbl.add_row(b["distance/threshold"], str(b["n"]), f"{b['mean_residual']:+.4f}", f"{b['mae']:.4f}",
                         str(b["n_pred_competitive"]), f"{b['mean_residual_pred_competitive']:+.4f}")
        console.print(stbl)
        ex = exploitation(model)
        results["exploitation"] = ex
        et = Table(title="CMA-ES on the noise-free surrogate (3 patterns x 60 generations x 16)")
        for c in ("ood_slope", "seed", "best noise-free", "distance", "in support", "penalty"):
            et.add_column(c, justify="right")
        for r in ex:
            et.add_row(f"{r['ood_slope']}", str(r["seed"]), f"{r['best_noise_free']:.4f}", f"{r['distance']:.3f}",
                       str(r["in_support"]), f"{r['penalty']:.4f}")
        console.print(et)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
        console.print(f"numbers written to {args.json}")


if __name__ == "__main__":
    main()
