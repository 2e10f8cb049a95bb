"""Our samplers inside Ray Tune (#28): the docs/samplers.md example, through Ray Tune's own OptunaSearch."""

from __future__ import annotations

import pytest

from centaur.samplers import create

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")
OptunaSearch = pytest.importorskip("ray.tune.search.optuna").OptunaSearch


@pytest.mark.parametrize(("method", "options"), [("cmaes", {}), ("smac", {"n_trials": 16})])
def test_ray_tune_runs_our_samplers(tmp_path, method, options):
    pytest.importorskip("smac") if method == "smac" else None

    def trainable(config):  # defined here: Ray's workers get it by value, not from this test module
        return {"loss": (config["x"] - 2) ** 2 + 0.1 * (config["layers"] - 3) ** 2}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        with create(method, seed=0, **options) as sampler:
            search = OptunaSearch(sampler=sampler, metric="loss", mode="min")
            tuner = tune.Tuner(
                trainable,
                param_space={"x": tune.uniform(-10, 10), "layers": tune.randint(1, 9)},
                tune_config=tune.TuneConfig(search_alg=search, num_samples=16),
                run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
            )
            results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 16 and results.num_errors == 0
    losses = sorted(r.metrics["loss"] for r in results)
    assert losses[0] < losses[len(losses) // 2]  # it found something better than its own median draw
    best = results.get_best_result(metric="loss", mode="min").config
    assert -10 <= best["x"] <= 10 and 1 <= best["layers"] <= 8 and isinstance(best["layers"], int)
