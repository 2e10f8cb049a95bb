"""OOM-aware search: a classifier, fitted on the study's own finished trials, of which configurations run
out of memory. CMA-ES uses it to resample a draw that is predicted to fail (a standard way to handle a
constraint that can only be evaluated by running: keep drawing from the same distribution until a point
is predicted feasible), and Centaur to veto an LLM proposal predicted to fail.

An out-of-memory trial still costs its start-up (15-45 s of a 5-minute trial on the study's GPU) and
teaches the optimizer only where not to go; predicting the boundary from the trials already run avoids
most of them. Nothing is predicted until the study has seen a few of both outcomes.

Speed: the model is refitted whenever a trial has finished, i.e. at nearly every proposal, so a fit must
cost about a millisecond. Three things made it cost 0.2 s on a busy 2-core machine: OpenBLAS's worker
threads (L-BFGS on a few hundred rows spin-waited for cores the benchmark's other processes held),
scikit-learn's per-call input checks (more than the fit itself) and decoding and encoding every trial
again at every fit. So fits and predictions run on one BLAS thread, `Logit` makes the same computations
as scikit-learn's pipeline without the checks, and encodings are cached by trial; the model is the same
(benchmarks/cmaes_speed.py: the same trials, seed for seed, at a fraction of the time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

Encoder = Callable[[dict[str, Any]], np.ndarray]

MIN_EACH = 3  # fit only once the study has at least this many OOMs and this many successes
THRESHOLD = 0.5  # a draw with a predicted OOM probability at or above this is drawn again
C = 10.0  # inverse L2 strength of the logistic regression
_BLAS: Any = None  # threadpoolctl's controller of the loaded BLAS libraries, made once per process

Key = tuple[Any, ...]


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """L-BFGS on a few hundred rows gains nothing from BLAS threads, and on a busy machine OpenBLAS's
    threads spin-wait for cores the other processes hold (0.2 s a fit instead of 5 ms)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()  # after numpy's and scipy's import, so their OpenBLAS are seen
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


def sklearn_logistic(x: np.ndarray, y: np.ndarray) -> Any:
    """The model as scikit-learn's own estimators fit it: the reference that `Logit` reproduces."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(x, y)


class Logit:
    """`sklearn_logistic`, fitted through the same computations that `Pipeline.fit` runs (StandardScaler,
    then LogisticRegression's L-BFGS-B call on its own loss, with the same options and start), without
    the per-call input checks, which cost more than the fit on a few hundred rows. The same arithmetic
    gives the same model; tests/test_feasibility.py checks it against `sklearn_logistic`."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        from scipy.optimize import minimize
        from sklearn._loss.loss import HalfBinomialLoss
        from sklearn.linear_model._linear_loss import LinearModelLoss
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        xs = self._standardise(x)
        target = (y == 1).astype(xs.dtype)
        loss = LinearModelLoss(base_loss=HalfBinomialLoss(), fit_intercept=True)
        res = minimize(loss.loss_gradient, np.zeros(xs.shape[1] + 1), method="L-BFGS-B", jac=True,
                       args=(xs, target, None, 1.0 / (C * len(xs)), 1),
                       options={"maxiter": 1000, "maxls": 50, "gtol": 1e-4, "ftol": 64 * np.finfo(float).eps})
        self.coef, self.intercept = res.x[:-1][:, None], res.x[-1:]

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=float) - self.mean) / self.scale

    def p_oom(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit((self._standardise(x) @ self.coef).reshape(-1) + self.intercept)


def _fit_logit(x: np.ndarray, y: np.ndarray) -> Any:
    try:
        return Logit(x, y)
    except (ImportError, AttributeError, TypeError):  # scikit-learn moved or changed its private loss classes:
        # the public, slower way (tests/test_feasibility.py fails on such a release, to say so)
        return _Pipeline(sklearn_logistic(x, y))


class _Pipeline:
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def p_oom(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(x)[:, 1]


def _key_of(values: Mapping[str, Any]) -> Key:
    return tuple(values.items())  # insertion order: a trial stored twice in two orders is encoded twice


class FailureModel:
    """P(out of memory | configuration), from the configurations that ran ("ok") or ran out of memory
    ("oom"). Other failure classes (crash, timeout, diverged) say nothing about memory and are left out."""

    def __init__(self, encode: Encoder) -> None:
        self.encode = encode
        self._clf: Any = None
        self._key: tuple[int, int] | None = None
        self._rows: dict[Key, np.ndarray] = {}  # encodings of the trials fitted on, by params or config

    @property
    def ready(self) -> bool:
        return self._clf is not None

    def fit(self, configs: Sequence[dict[str, Any]], statuses: Sequence[str]) -> FailureModel:
        """Refit on these trials (a no-op when their counts have not changed since the last fit)."""
        return self._fit([(_key_of(c), c) for c in configs], statuses, lambda c: c)

    def fit_trials(self, params: Sequence[Mapping[str, Any]], statuses: Sequence[str],
                   decode: Callable[[Mapping[str, Any]], dict[str, Any]]) -> FailureModel:
        """`fit` on trials given by their stored params, decoded into configurations by `decode` only
        the first time a trial is seen (a study refits at every proposal: the trials seen before are
        neither decoded nor encoded again)."""
        return self._fit([(("params", *_key_of(p)), p) for p in params], statuses, decode)

    def _fit(self, items: list[tuple[Any, Any]], statuses: Sequence[str], decode: Callable[[Any], dict[str, Any]]
             ) -> FailureModel:
        rows = [(k, v, s == "oom") for (k, v), s in zip(items, statuses, strict=True) if s in ("ok", "oom")]
        n_oom = sum(y for _, _, y in rows)
        key = (len(rows), n_oom)
        if key == self._key:
            return self
        self._key = key
        if n_oom < MIN_EACH or len(rows) - n_oom < MIN_EACH:
            self._clf = None
            return self
        x = np.array([self._row(k, v, decode) for k, v, _ in rows])
        y = np.array([oom for _, _, oom in rows], dtype=int)
        # Linear in CMA-ES's coordinates (log scale for sizes and rates): memory grows with the product
        # of sizes, which is a sum of their logs. Replayed on the reference study's 7,338 trials (fit on
        # each run's past, predict its next trials) it caught 91% of the OOMs and vetoed 5% of the runs
        # that succeeded; a random forest caught 87% at the same false-veto rate and took twice as long.
        with _one_blas_thread():
            self._clf = _fit_logit(x, y)
        return self

    def _row(self, key: Any, value: Any, decode: Callable[[Any], dict[str, Any]]) -> np.ndarray:
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = self.encode(decode(value))
        return row

    def p_oom(self, configs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Predicted probability of running out of memory; zeros while the model is not ready."""
        if self._clf is None or not configs:
            return np.zeros(len(configs))
        with _one_blas_thread():
            return self._clf.p_oom(np.array([self.encode(c) for c in configs]))

    def predicted_oom(self, config: dict[str, Any]) -> float | None:
        """P(OOM) of one configuration if it is predicted to fail, else None."""
        p = float(self.p_oom([config])[0])
        return p if p >= THRESHOLD else None
