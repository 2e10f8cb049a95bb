"""The surrogate as a measuring instrument: how finely a bench on it can tell two optimizers apart.

Three numbers say how to read a bench on the surrogate (docs/bench.md, "Resolution and regret"):
- its fidelity on held-out data (docs/surrogate.md, "Fidelity"), above all the RMSE in the competitive region
  across seeds (fit on one seed, predict the other's novel configurations), the way a study's trajectory meets
  the model: a difference between methods smaller than that error is not one the surrogate resolves. The
  leave-one-run-out numbers are kept beside it; they are finer because the other seed's run of the same
  method is in every training set;
- the best known in-support noise-free value, from a long CMA-ES search on the noise-free model: regret 0;
- the baseline, the noise-free value of the space's defaults: regret 1.

They take a minute or two (16 leave-one-run-out fits and 2 cross-seed fits), so they are computed once per
model and cached in a JSON sidecar beside the model file, keyed by what identifies the model (data sha256,
fit options, feature version) and the search settings. This module imports only the standard library at the
top: a report reads the record without loading LightGBM.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from centaur.space import SearchSpace
    from centaur.surrogate.model import SurrogateModel

INSTRUMENT_VERSION = 2  # 2: the cross-seed fidelity, which the resolution is read from
INSTRUMENT_ATTR = "surrogate_instrument"  # study user attribute written by the bench
MODEL_ATTR = "surrogate_model"  # study user attribute: `model_identity` of the surrogate the study ran on
MODEL_KEYS = ("data_sha256", "feature_version", "format_version", "fit_options")
SIDECAR_SUFFIX = ".instrument.json"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SearchSettings:
    """The search for the best known value: per combination of the categorical values (the 6 window
    patterns), `restarts` CMA-ES runs of `generations` x `population` evaluations on the unit box.

    The tree ensemble is piecewise constant and rugged: with CMA-ES's default population (16) runs ended
    anywhere in 0.9735-0.9786, with 96 in 0.9705-0.9721 (docs/bench.md, "Resolution and regret")."""

    restarts: int = 2
    generations: int = 60
    population: int = 96
    sigma: float = 0.3
    seed: int = 0

    @property
    def evaluations_per_run(self) -> int:
        return self.generations * self.population


@dataclass(frozen=True)
class Instrument:
    """The record: `key` identifies the model and the settings it was computed with."""

    key: dict[str, Any]
    loro: dict[str, Any]  # {"folds", "seconds", "all": {...}, "competitive": {...}}
    best_known: dict[str, Any]  # {"value", "config", "distance_to_data", ...}
    baseline: dict[str, Any]  # {"value", "config", "feasible"}
    created: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # {"folds", "all": {...}, "competitive": {... "bias_pooled", "max_abs_bias"}, "runs": [per held-out run]};
    # empty in a record of INSTRUMENT_VERSION 1 (a study written before it), which then resolves by LORO
    cross_seed: dict[str, Any] = field(default_factory=dict)

    @property
    def best_value(self) -> float:
        return float(self.best_known["value"])

    @property
    def baseline_value(self) -> float:
        return float(self.baseline["value"])

    @property
    def resolution_basis(self) -> str:
        """Which hold-out the resolution is read from: "cross-seed", or "leave-one-run-out" in an old record."""
        cross = _num(self.cross_seed.get("competitive", {}).get("rmse_pooled"))
        return "cross-seed" if cross is not None else "leave-one-run-out"

    @property
    def resolution(self) -> dict[str, Any]:
        """The summary (cross-seed or LORO, as `resolution_basis` says) that the resolution is read from."""
        return self.cross_seed if self.resolution_basis == "cross-seed" else self.loro

    @property
    def comp_rmse(self) -> float | None:
        """Competitive-region RMSE across seeds (pooled; LORO in an old record): the smallest difference the
        surrogate resolves."""
        return _num(self.resolution.get("competitive", {}).get("rmse_pooled"))

    @property
    def comp_spearman(self) -> float | None:
        return _num(self.resolution.get("competitive", {}).get("spearman_pooled"))

    @property
    def loro_comp_rmse(self) -> float | None:
        return _num(self.loro.get("competitive", {}).get("rmse_pooled"))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:12]

    def regret(self, noise_free: float) -> float:
        """(noise_free - best known) / (baseline - best known): 0 at the best known, 1 at the defaults."""
        span = self.baseline_value - self.best_value
        return (float(noise_free) - self.best_value) / span if span > 0 else math.nan

    def resolves(self, delta: float) -> bool | None:
        """Whether a paired mean difference of noise-free values is at least the competitive-region RMSE."""
        rmse = self.comp_rmse
        return None if rmse is None or not math.isfinite(delta) else abs(delta) >= rmse

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Instrument:
        """The record from `to_dict` (a sidecar or a study attribute); ValueError when it is not one."""
        try:
            inst = cls(key=dict(data["key"]), loro=dict(data["loro"]), best_known=dict(data["best_known"]),
                       baseline=dict(data["baseline"]), created=str(data.get("created", "")),
                       seconds=float(data.get("seconds", 0.0)), extra=dict(data.get("extra") or {}),
                       cross_seed=dict(data.get("cross_seed") or {}))
            _ = (inst.best_value, inst.baseline_value)  # both must be numbers
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a surrogate instrument record: {e}") from e
        return inst


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _jsonable(x: Any) -> Any:
    """Plain JSON (NaN and infinities as null), so that any Optuna storage keeps it as written."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)) or hasattr(x, "item"):  # numpy scalars too
        v = x.item() if hasattr(x, "item") else x
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return str(x)


# -- identity and cache ------------------------------------------------------------------------------


def model_identity(model: SurrogateModel) -> dict[str, Any]:
    """What makes two surrogates the same task: the data, the feature and model format versions (a change of
    the fit bumps the latter) and the fit options. Studies run on different ones are not comparable."""
    from centaur.surrogate.model import FORMAT_VERSION

    return _jsonable({"data_sha256": model.meta.get("data_sha256"), "feature_version": model.feature_version,
                      "format_version": FORMAT_VERSION, "fit_options": asdict(model.options)})


def identity_of_record(record: Any) -> dict[str, Any] | None:
    """The model identity inside a record's key (records carry it since the first version), else None."""
    key = record.get("key") if isinstance(record, Mapping) else None
    if not isinstance(key, Mapping) or any(k not in key for k in MODEL_KEYS):
        return None
    return {k: key[k] for k in MODEL_KEYS}


def instrument_key(model: SurrogateModel, settings: SearchSettings) -> dict[str, Any]:
    """What the numbers depend on: the model (`model_identity`) and the search."""
    return _jsonable({"instrument_version": INSTRUMENT_VERSION, **model_identity(model),
                      "search": asdict(settings), "holdout": "run,seed"})


def sidecar_path(model_path: str | Path) -> Path:
    """`surrogate-model.pkl` -> `surrogate-model.instrument.json`."""
    p = Path(model_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def load_cached(path: str | Path, key: Mapping[str, Any]) -> Instrument | None:
    """The cached record when it was computed for exactly `key`, else None (missing, stale or broken)."""
    try:
        inst = Instrument.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    return inst if inst.key == dict(key) else None


def save(inst: Instrument, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(inst.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def instrument_for(model: SurrogateModel, trials: str | Path, *, cache: str | Path | None = None,
                   settings: SearchSettings | None = None, progress: Progress | None = None) -> Instrument:
    """The cached record for this model, or compute it (minutes) and write the cache."""
    settings = settings or SearchSettings()
    if cache is not None:
        hit = load_cached(cache, instrument_key(model, settings))
        if hit is not None:
            return hit
    inst = compute_instrument(model, trials, settings=settings, progress=progress)
    if cache is not None:
        save(inst, cache)
    return inst


# -- computing it ------------------------------------------------------------------------------------


def compute_instrument(model: SurrogateModel, trials: str | Path, *, settings: SearchSettings | None = None,
                       space: SearchSpace | None = None, progress: Progress | None = None) -> Instrument:
    """Cross-seed and leave-one-run-out validation of the model's fit options on TRIALS (the model's own data),
    the best known in-support value and the baseline."""
    from centaur.space import reference_space
    from centaur.surrogate.data import file_sha256

    settings = settings or SearchSettings()
    space = space or reference_space()
    say = progress or (lambda _m: None)
    sha = model.meta.get("data_sha256")
    if sha is not None and file_sha256(trials) != sha:
        raise ValueError(f"{trials} is not the data this surrogate was fitted on (sha256 {str(sha)[:12]}…)")
    t0 = time.perf_counter()
    loro, cross_seed = holdout_summaries(model, trials, progress=say)
    say("best known value: CMA-ES on the noise-free surrogate")
    best = best_known(model, space, settings, progress=say)
    extra = {"data_best_observed": model.meta.get("best_observed"), "n_trials": model.meta.get("n_trials"),
             "support_threshold": model.support_threshold}
    return Instrument(key=instrument_key(model, settings), loro=loro, best_known=best,
                      baseline=baseline(model, space), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      seconds=time.perf_counter() - t0, extra=_jsonable(extra), cross_seed=cross_seed)


def holdout_summaries(model: SurrogateModel, trials: str | Path, *, progress: Progress | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Leave-one-run-out and cross-seed fidelity (pooled and mean of folds) with the model's fit options,
    overall and in the competitive region; the cross-seed one also per held-out run, with its bias."""
    from centaur.surrogate.validate import COMPETITIVE, holdout_validation

    t0 = time.perf_counter()
    rep = holdout_validation(trials, ("run", "seed"), options=model.options, include_code=model.options.include_code,
                             progress=progress)["holdout"]
    seconds = time.perf_counter() - t0

    def summary(res: dict[str, Any]) -> dict[str, Any]:
        pooled, mean, defined = res["pooled"], res["mean"], res["n_defined"]

        def part(prefix: str, spearman_key: str) -> dict[str, Any]:
            return {"n": pooled[f"{prefix}n"], "spearman_pooled": pooled[f"{prefix}spearman"],
                    "spearman_mean": mean[f"{prefix}spearman"], "folds_with_spearman": defined[spearman_key],
                    "rmse_pooled": pooled[f"{prefix}rmse"], "bias_pooled": pooled.get(f"{prefix}bias")}

        return {"folds": len(res["folds"]), "competitive_below": COMPETITIVE, "seconds": seconds,
                "all": {**part("", "spearman"), "feas_acc": pooled["feas_acc"]},
                "competitive": {**part("comp_", "comp_spearman"), "max_abs_bias": res.get("max_abs_comp_bias"),
                                "bias_min_n": res.get("bias_min_n")}}

    cross = {**summary(rep["seed"]), "runs": [
        {k: r.get(k) for k in ("name", "n", "spearman", "comp_n", "comp_spearman", "comp_rmse", "comp_bias")}
        for r in rep["seed"].get("runs", [])]}
    return _jsonable(summary(rep["run"])), _jsonable(cross)


def baseline(model: SurrogateModel, space: SearchSpace) -> dict[str, Any]:
    """The noise-free value of the space's defaults (Karpathy's configuration on the reference space)."""
    import numpy as np

    config = space.defaults()
    out = model.evaluate(config, rng=np.random.default_rng(0))
    return _jsonable({"value": out.noise_free, "feasible": out.feasible, "distance_to_data": out.distance_to_data,
                      "config": config})


def best_known(model: SurrogateModel, space: SearchSpace, settings: SearchSettings,
               progress: Progress | None = None) -> dict[str, Any]:
    """The lowest noise-free value of a configuration that the bench could run and the surrogate vouches for:
    inside the space, satisfying its constraints, predicted feasible and in support.

    CMA-ES (the `cmaes` package) on the unit box of the numeric parameters, once per combination of the
    categorical values; the first restart starts at the defaults, the others at random points. A candidate
    the bench could not run, or one out of support or predicted to fail, is told its value plus an offset,
    so the search keeps the gradient of the model but ends inside the region that counts.
    """
    import numpy as np
    from cmaes import CMA

    say = progress or (lambda _m: None)
    numeric = [p for p in space.params if p.kind != "categorical"]
    categorical = [p for p in space.params if p.kind == "categorical"]
    combos = list(itertools.product(*(p.choices for p in categorical)))
    rng = np.random.default_rng(settings.seed)
    noise = np.random.default_rng(0)  # evaluate_batch draws noise; only the noise-free value is used
    start = np.array([_to_unit(p, space.defaults()[p.name]) for p in numeric])
    best: dict[str, Any] = {"value": math.inf}
    per_combo: list[dict[str, Any]] = []
    n_eval, t0 = 0, time.perf_counter()
    for ci, combo in enumerate(combos):
        fixed = dict(zip((p.name for p in categorical), combo, strict=True))
        combo_best = math.inf
        for r in range(settings.restarts):
            say(f"best known value: {'/'.join(map(str, combo)) or 'run'} restart {r + 1}/{settings.restarts} "
                f"({ci * settings.restarts + r + 1}/{len(combos) * settings.restarts})")
            mean = start if r == 0 else rng.random(len(numeric))
            opt = CMA(mean=mean, sigma=settings.sigma, bounds=np.array([[0.0, 1.0]] * len(numeric)),
                      seed=int(rng.integers(2**31)), population_size=settings.population)
            for _ in range(settings.generations):
                xs = [opt.ask() for _ in range(opt.population_size)]
                configs = [{**_from_unit(numeric, x), **fixed} for x in xs]
                outs = model.evaluate_batch(configs, rng=noise)
                n_eval += len(xs)
                told = []
                for x, c, o in zip(xs, configs, outs, strict=True):
                    runnable = not space.violations(c)
                    counts = runnable and o.feasible and o.in_support
                    # offsets keep the order: counted < out of support < predicted OOM < not runnable
                    f = o.noise_free + (0.0 if counts else 1.0 if runnable and o.feasible else 2.0 if runnable
                                        else 3.0)
                    told.append((x, f))
                    if counts and o.noise_free < best["value"]:
                        best = {"value": o.noise_free, "config": c, "distance_to_data": o.distance_to_data,
                                "p_feasible": o.p_feasible, "epistemic_sd": o.epistemic_sd}
                    if counts:
                        combo_best = min(combo_best, o.noise_free)
                opt.tell(told)
        per_combo.append({"categorical": fixed, "best": combo_best})
    if not math.isfinite(best["value"]):
        raise ValueError("the search found no feasible in-support configuration")
    return _jsonable({**best, "evaluations": n_eval, "seconds": time.perf_counter() - t0,
                      "method": "CMA-ES (cmaes package) on the unit box, per categorical combination",
                      "per_categorical": per_combo})


def _to_unit(p: Any, value: Any) -> float:
    lo, hi, v = float(p.low), float(p.high), float(value)
    if p.kind == "pow2":
        lo, hi, v = math.log2(lo), math.log2(hi), math.log2(v)
    elif p.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return 0.5 if hi == lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)


def _from_unit(numeric: list[Any], x: Any) -> dict[str, Any]:
    """A point of the unit box -> a configuration of the space (integers rounded, powers of two exact)."""
    out: dict[str, Any] = {}
    for p, u in zip(numeric, x, strict=True):
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = float(p.low), float(p.high)
        if p.kind == "pow2":
            e_lo, e_hi = math.log2(lo), math.log2(hi)
            out[p.name] = 2 ** int(round(e_lo + u * (e_hi - e_lo)))
        else:
            v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if p.log else lo + u * (hi - lo)
            v = min(max(v, lo), hi)  # exp(log(hi)) can land a rounding error above hi
            out[p.name] = int(round(v)) if p.kind == "int" else v
    return out
