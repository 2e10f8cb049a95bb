"""OOM-aware search: a classifier, fitted on the study's own finished trials, of which configurations run
out of memory. CMA-ES uses it to resample a draw that is predicted to fail (a standard way to handle a
constraint that can only be evaluated by running: keep drawing from the same distribution until a point
is predicted feasible), and Centaur to veto an LLM proposal predicted to fail.

An out-of-memory trial still costs its start-up (15-45 s of a 5-minute trial on the study's GPU) and
teaches the optimizer only where not to go; predicting the boundary from the trials already run avoids
most of them. Nothing is predicted until the study has seen a few of both outcomes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Encoder = Callable[[dict[str, Any]], np.ndarray]

MIN_EACH = 3  # fit only once the study has at least this many OOMs and this many successes
THRESHOLD = 0.5  # a draw with a predicted OOM probability at or above this is drawn again


class FailureModel:
    """P(out of memory | configuration), from the configurations that ran ("ok") or ran out of memory
    ("oom"). Other failure classes (crash, timeout, diverged) say nothing about memory and are left out."""

    def __init__(self, encode: Encoder) -> None:
        self.encode = encode
        self._clf: Any = None
        self._key: tuple[int, int] | None = None

    @property
    def ready(self) -> bool:
        return self._clf is not None

    def fit(self, configs: Sequence[dict[str, Any]], statuses: Sequence[str]) -> FailureModel:
        """Refit on these trials (a no-op when their counts have not changed since the last fit)."""
        rows = [(c, s == "oom") for c, s in zip(configs, statuses, strict=True) if s in ("ok", "oom")]
        n_oom = sum(y for _, y in rows)
        key = (len(rows), n_oom)
        if key == self._key:
            return self
        self._key = key
        if n_oom < MIN_EACH or len(rows) - n_oom < MIN_EACH:
            self._clf = None
            return self
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.array([self.encode(c) for c, _ in rows])
        y = np.array([y for _, y in rows], dtype=int)
        # Linear in CMA-ES's coordinates (log scale for sizes and rates): memory grows with the product
        # of sizes, which is a sum of their logs. Replayed on the reference study's 7,338 trials (fit on
        # each run's past, predict its next trials) it caught 91% of the OOMs and vetoed 5% of the runs
        # that succeeded; a random forest caught 87% at the same false-veto rate and took twice as long.
        self._clf = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=1000)).fit(x, y)
        return self

    def p_oom(self, configs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Predicted probability of running out of memory; zeros while the model is not ready."""
        if self._clf is None or not configs:
            return np.zeros(len(configs))
        return self._clf.predict_proba(np.array([self.encode(c) for c in configs]))[:, 1]

    def predicted_oom(self, config: dict[str, Any]) -> float | None:
        """P(OOM) of one configuration if it is predicted to fail, else None."""
        p = float(self.p_oom([config])[0])
        return p if p >= THRESHOLD else None
