"""The reference study's task as a tuner task, answered by the surrogate instead of a GPU."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from centaur.space import SearchSpace, reference_space
from centaur.surrogate.data import HP_NAMES, WINDOW_PATTERNS, load_trials
from centaur.surrogate.features import TIME_BUDGET_S, physical, snap_config
from centaur.surrogate.model import FitOptions, SurrogateModel, fit_surrogate
from centaur.tasks.base import TrialResult, TrialStatus

TRIALS_ENV = "CENTAUR_SURROGATE_TRIALS"
OOM_ERROR = "CUDA out of memory (surrogate)"


class SurrogateTask:
    """Karpathy's autoresearch GPT (~50M params, H200 capped at 76 GB, 300 s per trial, val_bpb),
    simulated by a `SurrogateModel`.

    Noise is drawn from an rng seeded with (noise_seed, trial_number): a study's values are reproducible
    and do not depend on the order in which trials are evaluated.
    """

    name = "surrogate-autoresearch"
    metric = "val_bpb"
    direction = "minimize"

    def __init__(self, model: SurrogateModel | str | Path, *, noise_seed: int = 0,
                 space: SearchSpace | None = None) -> None:
        self.model = model if isinstance(model, SurrogateModel) else SurrogateModel.load(model)
        if noise_seed < 0:
            raise ValueError(f"noise_seed must be >= 0, got {noise_seed}")
        self.noise_seed = int(noise_seed)
        self.space = space if space is not None else reference_space()

    @classmethod
    def from_trials(cls, trials: str | Path | None = None, *, cache: str | Path | None = None,
                    noise_seed: int = 0, options: FitOptions | None = None) -> SurrogateTask:
        """Fit on a trials file (or $CENTAUR_SURROGATE_TRIALS); reuse `cache` when it matches the data."""
        path = Path(trials or os.environ.get(TRIALS_ENV, ""))
        if not str(path) or not path.is_file():
            raise FileNotFoundError(f"trials file not found: {path or '(none)'}; pass one or set ${TRIALS_ENV}")
        df = load_trials(path)
        if cache is not None and Path(cache).is_file():
            try:
                return cls(SurrogateModel.load(cache, expected_sha256=df.attrs["sha256"]), noise_seed=noise_seed)
            except Exception:  # stale or foreign cache: refit below
                pass
        model = fit_surrogate(df, options)
        if cache is not None:
            model.save(cache)
        return cls(model, noise_seed=noise_seed)

    def rng_for(self, trial_number: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.noise_seed, abs(int(trial_number))]))

    def evaluate(self, config: dict[str, Any], *, trial_number: int, run_dir: Path) -> TrialResult:
        t0 = time.perf_counter()
        problem = _check(config)
        if problem:
            return TrialResult(status=TrialStatus.INVALID, error=problem)
        snapped = snap_config(config)
        out = self.model.evaluate(snapped, rng=self.rng_for(trial_number))
        extra: dict[str, Any] = {"noise_free": out.noise_free, "distance_to_data": out.distance_to_data,
                                 "in_support": out.in_support, "p_feasible": out.p_feasible,
                                 "epistemic_sd": out.epistemic_sd, "noise_sd": out.noise_sd,
                                 "ood_penalty": out.penalty,
                                 "surrogate_ms": (time.perf_counter() - t0) * 1e3}
        changed = {k: snapped[k] for k in HP_NAMES if k in config and snapped[k] != config[k]}
        if changed:
            extra["snapped"] = changed  # what the reference runner would have run instead
        mem = float(physical(_cols(snapped))["mem_gb"][0])
        if not out.feasible:
            return TrialResult(status=TrialStatus.OOM, cost_s=out.cost_s, wall_s=out.cost_s,
                               metrics={"est_memory_gb": mem}, error=OOM_ERROR, extra=extra)
        return TrialResult(status=TrialStatus.OK, value=out.observed, cost_s=TIME_BUDGET_S, wall_s=TIME_BUDGET_S,
                           metrics={"val_bpb": float(out.observed), "training_seconds": TIME_BUDGET_S,
                                    "est_memory_gb": mem},
                           extra=extra)

    def describe(self) -> str:
        m = self.model.meta
        return (
            "Task: pre-train Karpathy's autoresearch GPT (nanochat-style decoder, ~50M parameters at the "
            "defaults: depth 8, width 512, 4 heads of 128, vocab 8192, context 2048, Muon + AdamW) on "
            "climbmix text for a fixed 300 s of training per trial on one NVIDIA H200 capped at ~76 GB "
            "of GPU memory. Objective: validation bits per byte (val_bpb), lower is better; Karpathy's "
            "defaults give about 0.991. Deep/wide models or large DEVICE_BATCH_SIZE run out of memory "
            "(CUDA OOM), which wastes ~15-45 s of the budget. Each successful trial costs 300 s of a 24 h "
            "budget. This task is a SURROGATE: a tree-ensemble model fitted on "
            f"{m.get('n_trials')} real trials of the reference study (arXiv 2603.24647) answers instead of "
            "a GPU, with Gaussian observation noise estimated from repeated runs."
        )


def _cols(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    from centaur.surrogate.features import config_columns

    return config_columns([cfg])


def _check(config: dict[str, Any]) -> str | None:
    """A reason the config cannot run at all (the surrogate would otherwise guess), or None."""
    missing = [h for h in HP_NAMES if h not in config]
    if missing:
        return f"missing hyperparameters: {', '.join(missing)}"
    for h in HP_NAMES:
        v = config[h]
        if h == "WINDOW_PATTERN":
            if str(v).upper() not in WINDOW_PATTERNS:
                return f"WINDOW_PATTERN must be one of {', '.join(WINDOW_PATTERNS)}, not {v!r}"
        elif isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            return f"{h} must be a finite number, not {v!r}"
    return None
