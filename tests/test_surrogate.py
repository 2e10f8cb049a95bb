"""Tests of the surrogate of the reference study's task (centaur/surrogate)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm")
pd = pytest.importorskip("pandas")

from centaur.surrogate import features as F  # noqa: E402
from centaur.surrogate.data import (  # noqa: E402
    CODE_METHOD,
    DEFAULT_CONFIG,
    HP_NAMES,
    TrialsFormatError,
    load_trials,
)
from centaur.surrogate.model import (  # noqa: E402
    FitOptions,
    SurrogateModel,
    SurrogateVersionError,
    fit_surrogate,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "paper_trials_seeds01.json"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"reference trials not found at {DATA} "
                                "(../shared/data/paper_trials_seeds01.json relative to the repo root)")

# Few trees: the suite checks behaviour, not the final fidelity (benchmarks/surrogate_bench.py does).
SMALL = FitOptions(n_models=2, n_estimators=200, learning_rate=0.08, clf_estimators=150, cost_estimators=100)
OOM_CONFIG = dict(DEFAULT_CONFIG, DEPTH=24, ASPECT_RATIO=128, DEVICE_BATCH_SIZE=256)


@pytest.fixture(scope="module")
def trials():
    return load_trials(DATA)


@pytest.fixture(scope="module")
def model(trials) -> SurrogateModel:
    return fit_surrogate(trials, SMALL)


# -- data ------------------------------------------------------------------------------------------


@needs_data
def test_load_trials(trials) -> None:
    assert len(trials) == 7338
    assert {"method", "seed", "tid", *HP_NAMES, "val_bpb", "success", "wt"} <= set(trials.columns)
    assert set(trials["seed"]) == {0, 1}
    assert trials["method"].nunique() == 9
    # val_bpb is NaN exactly for failures (the file's 100.0 / null / LLAMBO penalties are dropped)
    assert trials.loc[~trials["success"], "val_bpb"].isna().all()
    assert trials.loc[trials["success"], "val_bpb"].between(0.9, 3.0).all()
    # the code agent's logger drops TOTAL_BATCH_SIZE = 2**19
    assert trials.loc[trials["method"] == CODE_METHOD, "TOTAL_BATCH_SIZE"].isna().sum() > 600
    assert len(trials.attrs["sha256"]) == 64


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trials(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(TrialsFormatError):
        load_trials(bad)
    bad.write_text(json.dumps({"TPE": {"0": [{"tid": 0, "success": True, "wt": 300.0}]}}))
    with pytest.raises(TrialsFormatError, match="missing"):
        load_trials(bad)


# -- features --------------------------------------------------------------------------------------


def test_features_at_defaults() -> None:
    ph = {k: float(v[0]) for k, v in F.physical(F.config_columns([DEFAULT_CONFIG])).items()}
    assert ph["model_dim"] == 512 and ph["n_head"] == 4
    assert ph["params_total"] == pytest.approx(50.3e6, rel=0.01)  # reference: ~50.3M
    assert ph["params_nonembed"] == pytest.approx(25.2e6, rel=0.01)
    assert ph["steps_300s"] == pytest.approx(953, rel=0.01)  # reference H100 point
    assert ph["tokens_300s"] == pytest.approx(499.6e6)
    assert ph["grad_accum"] == 2
    assert 35 < ph["mem_gb"] < 50  # reference: ~45 GB peak at the defaults
    x = F.feature_matrix(F.config_columns([DEFAULT_CONFIG]))
    assert x.shape == (1, len(F.FEATURE_NAMES)) and np.isfinite(x).all()


def test_bigger_models_cost_more() -> None:
    small, big = F.config_columns([DEFAULT_CONFIG]), F.config_columns([OOM_CONFIG])
    ps, pb = F.physical(small), F.physical(big)
    for k in ("params_total", "flops_per_token", "mem_gb"):
        assert pb[k][0] > ps[k][0]
    assert pb["steps_300s"][0] < ps["steps_300s"][0]
    assert pb["mem_gb"][0] > F.MEMORY_CAP_GB


def test_window_patterns() -> None:
    def long_frac(pattern: str, depth: int) -> float:
        c = F.config_columns([dict(DEFAULT_CONFIG, WINDOW_PATTERN=pattern, DEPTH=depth)])
        return float(F.physical(c)["long_frac"][0])

    assert long_frac("SSSL", 8) == 2 / 8
    assert long_frac("LLLL", 8) == 1.0
    assert long_frac("SSSS", 8) == 1 / 8  # the last layer is always long
    assert long_frac("SSSL", 6) == 2 / 6  # layer 3 and the forced last


def test_snap_config() -> None:
    s = F.snap_config(dict(DEFAULT_CONFIG, HEAD_DIM=100, DEVICE_BATCH_SIZE=96, TOTAL_BATCH_SIZE=70000,
                           DEPTH=7.6, MATRIX_LR=5.0))
    assert s["HEAD_DIM"] == 128  # nearest power of two
    assert s["DEVICE_BATCH_SIZE"] == 64  # tie between 64 and 128 goes down
    assert s["TOTAL_BATCH_SIZE"] == 131072  # raised to one micro-batch: 64 x 2048
    assert s["DEPTH"] == 8 and s["MATRIX_LR"] == 0.2


# -- model -----------------------------------------------------------------------------------------


@needs_data
def test_defaults_feasible_near_reference(model: SurrogateModel) -> None:
    out = model.evaluate(DEFAULT_CONFIG, rng=np.random.default_rng(0))
    assert out.feasible and out.in_support
    assert out.noise_free == pytest.approx(0.991, abs=0.004)  # reference baseline 0.991-0.993 on H200
    assert out.observed is not None and abs(out.observed - out.noise_free) < 0.01
    assert out.cost_s == 300.0
    assert out.distance_to_data < 1e-6  # the defaults were run many times


@needs_data
def test_oom_config(model: SurrogateModel) -> None:
    out = model.evaluate(OOM_CONFIG, rng=np.random.default_rng(0))
    assert not out.feasible and out.observed is None
    assert math.isfinite(out.noise_free)  # still reported for analysis
    assert 5.0 < out.cost_s < 120.0  # OOMs die during start-up


@needs_data
def test_evaluate_is_deterministic(model: SurrogateModel) -> None:
    cfg = dict(DEFAULT_CONFIG, MATRIX_LR=0.06, WARMDOWN_RATIO=0.6)
    a = model.evaluate(cfg, rng=np.random.default_rng(7))
    b = model.evaluate(cfg, rng=np.random.default_rng(7))
    c = model.evaluate(cfg, rng=np.random.default_rng(8))
    assert a == b
    assert a.noise_free == c.noise_free and a.observed != c.observed
    batch1 = model.evaluate_batch([cfg, OOM_CONFIG, DEFAULT_CONFIG], rng=np.random.default_rng(3))
    batch2 = model.evaluate_batch([cfg, OOM_CONFIG, DEFAULT_CONFIG], rng=np.random.default_rng(3))
    assert batch1 == batch2
    assert [o.feasible for o in batch1] == [True, False, True]


@needs_data
def test_out_of_support_penalty(model: SurrogateModel) -> None:
    # a deep, narrow, feasible config with LRs unlike any successful trial (found by random search)
    corner = dict(DEPTH=24, ASPECT_RATIO=36, HEAD_DIM=64, DEVICE_BATCH_SIZE=32, TOTAL_BATCH_SIZE=2**21,
                  EMBEDDING_LR=0.014, UNEMBEDDING_LR=6.3e-4, MATRIX_LR=0.1, SCALAR_LR=0.12, WEIGHT_DECAY=0.48,
                  WARMUP_RATIO=0.21, WARMDOWN_RATIO=0.63, FINAL_LR_FRAC=0.197, WINDOW_PATTERN="SSSS")
    out = model.evaluate(corner, rng=np.random.default_rng(0))
    assert out.distance_to_data > model.support_threshold and not out.in_support
    expected = model.options.ood_slope * (out.distance_to_data - model.support_threshold)
    assert out.penalty == pytest.approx(expected)
    inside = model.evaluate(DEFAULT_CONFIG, rng=np.random.default_rng(0))
    assert inside.penalty == 0.0


@needs_data
def test_noise_from_repeats(model: SurrogateModel) -> None:
    n = model.noise
    assert n.n_groups > 400
    assert 1e-4 < n.median_sd < 1e-3  # reference: median sd ~1e-4 to 6e-4
    assert n.sd_at(np.array([0.975]))[0] < n.sd_at(np.array([1.3]))[0]  # noisier in bad regions


@needs_data
def test_latency(model: SurrogateModel) -> None:
    rng = np.random.default_rng(0)
    model.evaluate(DEFAULT_CONFIG, rng=rng)
    t0 = time.perf_counter()
    for _ in range(50):
        model.evaluate(DEFAULT_CONFIG, rng=rng)
    assert (time.perf_counter() - t0) / 50 < 0.005


@needs_data
def test_save_load_roundtrip(model: SurrogateModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = model.save(tmp_path / "s.pkl")
    loaded = SurrogateModel.load(path, expected_sha256=model.meta["data_sha256"])
    cfg = dict(DEFAULT_CONFIG, DEPTH=10)
    assert loaded.evaluate(cfg, rng=np.random.default_rng(1)) == model.evaluate(cfg, rng=np.random.default_rng(1))
    with pytest.raises(SurrogateVersionError, match="data"):
        SurrogateModel.load(path, expected_sha256="0" * 64)
    import centaur.surrogate.model as M

    monkeypatch.setattr(M, "FEATURE_VERSION", F.FEATURE_VERSION + 1)
    with pytest.raises(SurrogateVersionError, match="feature version"):
        SurrogateModel.load(path)
    (tmp_path / "junk.pkl").write_bytes(b"junk")
    with pytest.raises(SurrogateVersionError):
        SurrogateModel.load(tmp_path / "junk.pkl")


def test_objective_weights_upweight_the_competitive_region() -> None:
    from centaur.surrogate.model import objective_weights

    y = np.array([0.975, 0.995, 1.0, 1.2])
    assert FitOptions().competitive_weight > 1.0  # on by default
    assert objective_weights(y, FitOptions(competitive_weight=1.0)) is None  # off: plain L2
    assert objective_weights(y, FitOptions(competitive_weight=5.0, weight_below=1.0)).tolist() == [5, 5, 1, 1]
    with pytest.raises(ValueError, match="competitive_weight"):
        objective_weights(y, FitOptions(competitive_weight=0.0))


def test_competitive_weight_changes_the_fit(tmp_path: Path) -> None:
    df = load_trials(synthetic_trials(tmp_path / "trials.json"))
    plain = fit_surrogate(df, TINY, competitive_weight=1.0)
    weighted = fit_surrogate(df, TINY, competitive_weight=5.0, weight_below=0.99)
    cfgs = [dict(DEFAULT_CONFIG, MATRIX_LR=lr) for lr in (0.02, 0.03, 0.05)]
    a = plain.predict_columns(F.config_columns(cfgs))["raw"]
    b = weighted.predict_columns(F.config_columns(cfgs))["raw"]
    assert not np.allclose(a, b)
    assert "loss weight x5 below 0.99" in weighted.describe() and "loss weight" not in plain.describe()


@needs_data
def test_include_code_imputes_batch(trials) -> None:
    m = fit_surrogate(trials, SMALL, include_code=True)
    assert CODE_METHOD in m.meta["methods"]
    assert m.meta["n_trials"] == len(trials)


# -- validation ------------------------------------------------------------------------------------


@needs_data
def test_validate_cross_seed() -> None:
    from centaur.surrogate.validate import format_report, validate_surrogate

    report = validate_surrogate(DATA, options=SMALL, methods=False)
    s = report["summary"]["seed"]
    assert 0.93 < s["spearman"] <= 1.0
    assert 0.7 < s["kendall"] <= 1.0
    assert 0.0 < s["rmse"] < 0.05
    assert s["feas_acc"] > 0.98 and s["feas_bacc"] > 0.97
    assert 0.2 < s["comp_spearman"] < 0.95  # noise ~ the gaps between competitive configs
    assert "seed 0 -> 1" in format_report(report)


@needs_data
@pytest.mark.slow
def test_validate_leave_one_method_out() -> None:
    from centaur.surrogate.validate import validate_surrogate

    report = validate_surrogate(DATA, options=SMALL, methods=True)
    rows = {r["name"]: r for r in report["splits"]}
    assert rows["without TPE"]["spearman"] > 0.6
    assert all(r["feas_acc"] > 0.97 for r in report["splits"])


# -- task ------------------------------------------------------------------------------------------


@needs_data
def test_surrogate_task(model: SurrogateModel, tmp_path: Path) -> None:
    pytest.importorskip("centaur.space")
    from centaur.surrogate.task import OOM_ERROR, SurrogateTask
    from centaur.tasks.base import Task, TrialStatus

    task = SurrogateTask(model, noise_seed=3)
    assert isinstance(task, Task)
    assert set(task.space.names) == set(HP_NAMES)
    assert "H200" in task.describe() and "val_bpb" in task.describe()
    ok = task.evaluate(DEFAULT_CONFIG, trial_number=5, run_dir=tmp_path)
    assert ok.status is TrialStatus.OK and ok.cost_s == 300.0
    assert ok.metrics["val_bpb"] == ok.value and ok.metrics["training_seconds"] == 300.0
    assert {"noise_free", "distance_to_data", "in_support"} <= set(ok.extra)
    oom = task.evaluate(OOM_CONFIG, trial_number=6, run_dir=tmp_path)
    assert oom.status is TrialStatus.OOM and oom.error == OOM_ERROR and oom.value is None
    assert 0 < oom.cost_s < 300
    # values depend on (noise_seed, trial_number) only, not on the evaluation order
    again = SurrogateTask(model, noise_seed=3)
    again.evaluate(OOM_CONFIG, trial_number=1, run_dir=tmp_path)
    assert again.evaluate(DEFAULT_CONFIG, trial_number=5, run_dir=tmp_path).value == ok.value
    assert task.evaluate(DEFAULT_CONFIG, trial_number=4, run_dir=tmp_path).value != ok.value
    bad = task.evaluate(dict(DEFAULT_CONFIG, WINDOW_PATTERN="XYZ"), trial_number=7, run_dir=tmp_path)
    assert bad.status is TrialStatus.INVALID and bad.error
    snapped = task.evaluate(dict(DEFAULT_CONFIG, HEAD_DIM=100), trial_number=8, run_dir=tmp_path)
    assert snapped.extra["snapped"] == {"HEAD_DIM": 128}


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from centaur.surrogate.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["fit", "--trials", str(tmp_path / "missing.json"), "-o", str(tmp_path / "m.pkl")])
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = runner.invoke(app, ["validate", "--trials", str(bad)])
    assert res.exit_code == 1 and "expected" in res.output


@needs_data
def test_cli_fit_and_evaluate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from centaur.surrogate.cli import app

    runner = CliRunner()
    out = tmp_path / "m.pkl"
    res = runner.invoke(app, ["fit", "--trials", str(DATA), "-o", str(out), "--n-models", "1"])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    res = runner.invoke(app, ["evaluate", "-m", str(out), "-s", "DEPTH=24", "-s", "ASPECT_RATIO=128",
                              "-s", "DEVICE_BATCH_SIZE=256"])
    assert res.exit_code == 0 and "False" in res.output


# -- leave-one-run-out and leave-one-seed-out, on a small synthetic study -------------------------

TINY = FitOptions(n_models=1, n_estimators=30, learning_rate=0.2, min_data_in_leaf=3, clf_estimators=20,
                  cost_estimators=10)


def synthetic_trials(path: Path, n: int = 30) -> Path:
    """Three methods and the code agent, two seeds each: val_bpb a smooth function of the learning rate
    and depth, deep large-batch configs fail, and every run repeats the defaults (exact repeats: the
    noise model needs them, and they are not novel in any fold)."""
    rng = np.random.default_rng(0)
    data: dict[str, dict[str, list[dict]]] = {}
    for m, method in enumerate(("A", "B", "C", CODE_METHOD)):
        for seed in (0, 1):
            runs = data.setdefault(method, {}).setdefault(str(seed), [])
            for tid in range(n):
                c = dict(DEFAULT_CONFIG)
                if tid % 6:
                    c.update(DEPTH=int(rng.choice([4, 6, 8, 10, 12])), DEVICE_BATCH_SIZE=int(rng.choice([32, 64, 128])),
                             MATRIX_LR=float(0.04 * np.exp(rng.normal(0.3 * m, 0.5))),
                             WARMDOWN_RATIO=float(rng.uniform(0.2, 0.8)))
                ok = not (c["DEPTH"] >= 12 and c["DEVICE_BATCH_SIZE"] == 128)
                val = (0.975 + 0.02 * np.log(c["MATRIX_LR"] / 0.03) ** 2 + 0.002 * abs(c["DEPTH"] - 8)
                       + 0.01 * abs(c["WARMDOWN_RATIO"] - 0.5) + rng.normal(0, 3e-4))
                runs.append({"tid": tid, **c, "val_bpb": float(val) if ok else 100.0, "success": ok,
                             "wt": 300.0 if ok else 30.0})
    path.write_text(json.dumps(data))
    return path


def test_leave_one_run_out_and_seed_out_score_novel_configurations(tmp_path: Path) -> None:
    from centaur.surrogate.validate import _key, validate_surrogate

    data = synthetic_trials(tmp_path / "trials.json")
    report = validate_surrogate(data, options=TINY, methods=False, holdout=("run", "seed"))
    run, seed = report["holdout"]["run"], report["holdout"]["seed"]
    assert [f["name"] for f in run["folds"]] == [f"{m} s{s}" for m in "ABC" for s in (0, 1)]  # code: train only
    assert [f["name"] for f in seed["folds"]] == ["seed 0", "seed 1"]
    assert run["fits"] == 6 and seed["fits"] == 0  # leave-one-seed-out trains on the cross-seed sets
    df = load_trials(data)
    df = df[df["method"] != CODE_METHOD]
    for fold in run["folds"]:
        m, s = fold["name"][0], int(fold["name"][-1])
        held = (df["method"] == m) & (df["seed"] == s)
        novel = ~_key(df[held]).isin(set(_key(df[~held])))
        assert fold["n_test"] == int(novel.sum()) < fold["n_held"] == int(held.sum())  # the defaults are not novel
        assert fold["n"] + fold["n_failed"] == fold["n_test"]
    pooled = run["pooled"]
    assert pooled["n_test"] == sum(f["n_test"] for f in run["folds"]) and pooled["comp_n"] > 10
    for res in (run, seed):
        p = res["pooled"]
        assert 0.3 < p["spearman"] <= 1.0 and 0 < p["rmse"] < 0.05 and 0.8 < p["feas_acc"] <= 1.0
        assert not math.isnan(p["comp_spearman"]) and p["comp_rmse"] > 0
        assert set(res["mean"]) >= {"spearman", "comp_spearman", "rmse", "feas_acc"}
    # the cross-seed hold-out is also scored per held-out run: the runs partition each seed's novel trials
    assert [r["name"] for r in seed["runs"]] == [f"{m} s{s}" for s in (0, 1) for m in "ABC"]
    for key in ("n_test", "n", "comp_n"):
        assert sum(r[key] for r in seed["runs"]) == seed["pooled"][key]
    comp = [r for r in seed["runs"] if r["comp_n"]]
    weighted = sum(r["comp_bias"] * r["comp_n"] for r in comp) / sum(r["comp_n"] for r in comp)
    assert seed["pooled"]["comp_bias"] == pytest.approx(weighted)
    big = [abs(r["comp_bias"]) for r in seed["runs"] if r["comp_n"] >= seed["bias_min_n"]]
    assert big and seed["max_abs_comp_bias"] == max(big)
    assert run["runs"] == [] and run["max_abs_comp_bias"] == pytest.approx(max(
        abs(f["comp_bias"]) for f in run["folds"] if f["comp_n"] >= run["bias_min_n"]))


def test_cli_validate_prints_holdout_splits_in_80_columns(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from centaur.surrogate import cli

    data = synthetic_trials(tmp_path / "trials.json", n=24)
    runner = CliRunner()
    res = runner.invoke(cli.app, ["validate", "--trials", str(data), "--split", "run,seed", "--n-models", "1",
                                  "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "leave-one-run-out: novel configurations" in res.output and "leave-one-seed-out" in res.output
    assert "per run" in res.output and "max |bias|" in res.output
    assert "val_bpb < 0.99" in res.output and "pooled" in res.output and "Traceback" not in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    assert set(json.loads((tmp_path / "r.json").read_text())["holdout"]) == {"run", "seed"}
    bad = runner.invoke(cli.app, ["validate", "--trials", str(data), "--split", "runs"])
    assert bad.exit_code == 2 and "--split" in bad.output


# -- the scaling law under the trees ---------------------------------------------------------------


LR_MULTS = (1.0, 1.02, 2.0, 4.0)  # of the optimal MATRIX_LR: two runs at the optimum, two worse


def law_trials(ar_max: int, seed: int = 0) -> pd.DataFrame:
    """A study on a grid of architectures whose best val_bpb follows a known law in params, tokens and steps,
    each run with the matrix learning rates LR_MULTS (val_bpb + 0.01 log2(mult)^2), defaults repeated for the
    noise model; only aspect ratios up to AR_MAX."""
    from centaur.surrogate.data import COLUMNS

    rng = np.random.default_rng(seed)
    rows = []
    for depth in (4, 6, 8, 10, 12):
        for ar in (32, 48, 64, 80, 96, 112, 128):
            for tbs in (2**17, 2**18, 2**19, 2**20):
                if ar > ar_max:
                    continue
                for mult in LR_MULTS:
                    c = dict(DEFAULT_CONFIG, DEPTH=depth, ASPECT_RATIO=ar, TOTAL_BATCH_SIZE=tbs, MATRIX_LR=0.04 * mult)
                    rows.append({**c, "val_bpb": true_law(c) + 0.01 * math.log2(mult) ** 2 + rng.normal(0, 2e-4)})
    rows += [{**DEFAULT_CONFIG, "val_bpb": true_law(DEFAULT_CONFIG) + rng.normal(0, 2e-4)} for _ in range(6)]
    df = pd.DataFrame(rows)
    df["method"], df["seed"], df["tid"], df["success"], df["wt"] = "A", 0, range(len(df)), True, 300.0
    return df[list(COLUMNS)]


def true_law(c: dict) -> float:
    ph = F.physical(F.config_columns([c]))
    n, d, s = ph["params_nonembed"][0] / 2.5e7, ph["tokens_300s"][0] / 5e8, ph["steps_300s"][0] / 950.0
    return 0.80 + 0.1 * n**-0.5 + 0.06 * d**-0.45 + 0.04 * s**-0.6


def n_cells(df: pd.DataFrame) -> int:
    """Architecture cells with a value below the law's cap (1.1): the smallest models' are all above it."""
    from centaur.surrogate.scaling import ARCH_HPS

    return int((df.groupby(list(ARCH_HPS))["val_bpb"].min() < 1.1).sum())


def test_scaling_law_fits_the_envelope_over_learning_rates() -> None:
    from centaur.surrogate.scaling import fit_scaling_law

    df = law_trials(ar_max=128)
    law = fit_scaling_law(df)
    assert law is not None and law.n_cells == n_cells(df)
    best = df[df["MATRIX_LR"] == 0.04]  # the cells' best runs: the law is theirs, not the mean over LRs (+0.0125)
    err = law.predict(F.frame_columns(best)) - best["val_bpb"].to_numpy()
    assert np.sqrt(np.mean(err**2)) < 1e-3 and abs(err.mean()) < 5e-4
    assert law.e == pytest.approx(0.80, abs=0.03) and all(p > 0 for p in law.p)
    assert fit_scaling_law(df.head(40)) is None  # 10 cells: too few for seven parameters


def test_trees_on_the_law_extrapolate_along_it(tmp_path: Path) -> None:
    """Fitted on narrow models only, the surrogate predicts wider ones along the law; trees alone stay flat."""
    train = law_trials(ar_max=80)
    wide = law_trials(ar_max=128)
    wide = wide[(wide["ASPECT_RATIO"] >= 112) & (wide["MATRIX_LR"] == 0.04)]
    opts = FitOptions(n_models=1, n_estimators=150, learning_rate=0.1, min_data_in_leaf=5, clf_estimators=20,
                      cost_estimators=10, competitive_weight=1.0, lr_ridge=False)
    with_law = fit_surrogate(train, opts)
    without = fit_surrogate(train, opts, scaling_law=False)
    with_ridge = fit_surrogate(train, opts, lr_ridge=True)  # the default: the law's ensemble and the ridge's
    assert with_law.law is not None and without.law is None and with_law.meta["scaling_law"]["cells"] == n_cells(train)
    y = wide["val_bpb"].to_numpy()
    rmse = {name: float(np.sqrt(np.mean((m.predict_frame(wide)["raw"] - y) ** 2)))
            for name, m in (("law", with_law), ("trees", without), ("ridge", with_ridge))}
    assert rmse["law"] < 0.5 * rmse["trees"] and rmse["ridge"] < 0.5 * rmse["trees"], rmse
    # the model is the law plus the trees' mean, and it round-trips
    cols = F.frame_columns(wide)
    trees = np.mean([b.predict(F.feature_matrix(cols)) for b in with_law.regressors], axis=0)
    assert with_law.predict_frame(wide)["raw"] == pytest.approx(with_law.law.predict(cols) + trees)
    with_law.save(tmp_path / "m.pkl")
    again = SurrogateModel.load(tmp_path / "m.pkl")
    assert again.predict_frame(wide)["raw"] == pytest.approx(with_law.predict_frame(wide)["raw"])


# -- the learning-rate ridge (FitOptions.lr_ridge, on by default since format 4) -----------------------------


def ridge_trials(seed: int = 0) -> pd.DataFrame:
    """Architectures on a grid whose best val_bpb follows `true_law`, each run at MATRIX_LR and UNEMBEDDING_LR
    multiples of 0.5, 1 and 2 of their optimum, with a ridge: only their product matters
    (val_bpb + 0.02 (log2 m + log2 u)^2)."""
    from centaur.surrogate.data import COLUMNS

    rng = np.random.default_rng(seed)
    rows = []
    for depth in (4, 6, 8, 10, 12):
        for ar in (32, 64, 96, 128):
            for tbs in (2**17, 2**18, 2**19):
                for m in (0.5, 1.0, 2.0):
                    for u in (0.5, 1.0, 2.0):
                        c = dict(DEFAULT_CONFIG, DEPTH=depth, ASPECT_RATIO=ar, TOTAL_BATCH_SIZE=tbs,
                                 MATRIX_LR=0.04 * m, UNEMBEDDING_LR=0.004 * u)
                        v = true_law(c) + 0.02 * (math.log2(m) + math.log2(u)) ** 2 + rng.normal(0, 2e-4)
                        rows.append({**c, "val_bpb": v})
    rows += [{**DEFAULT_CONFIG, "val_bpb": true_law(DEFAULT_CONFIG) + rng.normal(0, 2e-4)} for _ in range(6)]
    df = pd.DataFrame(rows)
    df["method"], df["seed"], df["tid"], df["success"], df["wt"] = "A", 0, range(len(df)), True, 300.0
    return df[list(COLUMNS)]


def test_ridge_law_finds_the_ridge_and_follows_it() -> None:
    from centaur.surrogate.scaling import fit_ridge_law

    df = ridge_trials()
    ridge = fit_ridge_law(df)
    assert ridge is not None and ridge.n_trials == int((df["val_bpb"] < 1.1).sum())
    # far along the ridge (8x one LR, 1/8 the other: no trial within 4x) the value is the law's; across it, worse
    along = dict(DEFAULT_CONFIG, DEPTH=8, ASPECT_RATIO=64, MATRIX_LR=0.32, UNEMBEDDING_LR=0.0005)
    across = dict(along, UNEMBEDDING_LR=0.032)
    p_along, p_across = ridge.predict(F.config_columns([along, across]))
    assert p_along == pytest.approx(true_law(along), abs=3e-3)
    assert p_across - true_law(across) > 0.2  # 0.02 * 6^2 = 0.72 in truth
    # the form's flattest direction is the ridge, (1, -1) in log MATRIX_LR and log UNEMBEDDING_LR
    q = ridge.form()[1:3, 1:3]
    flat, steep = np.array([1.0, -1.0]) / math.sqrt(2), np.array([1.0, 1.0]) / math.sqrt(2)
    assert flat @ q @ flat < 0.05 * (steep @ q @ steep)
    assert ridge.as_dict()["trials"] == ridge.n_trials


def test_lr_ridge_option_averages_two_ensembles(tmp_path: Path) -> None:
    df = ridge_trials()
    opts = FitOptions(n_models=2, n_estimators=60, learning_rate=0.1, min_data_in_leaf=5, clf_estimators=20,
                      cost_estimators=10)
    plain = fit_surrogate(df, opts, lr_ridge=False)
    assert plain.ridge is None and plain.ridge_regressors == [] and plain.meta["ridge_law"] is None
    model = fit_surrogate(df, opts)  # the default
    assert model.options.lr_ridge and model.ridge is not None and len(model.ridge_regressors) == 2
    assert model.meta["ridge_law"]["trials"] > 0
    assert "LR ridge" in model.describe()
    test = df.sample(50, random_state=0)
    cols = F.frame_columns(test)
    x = F.feature_matrix(cols)
    law = np.vstack([b.predict(x) for b in model.regressors]) + model.law.predict(cols)
    ridge = np.vstack([b.predict(x) for b in model.ridge_regressors]) + model.ridge.predict(cols)
    p = model.predict_frame(test)
    assert p["raw"] == pytest.approx(0.5 * (law.mean(axis=0) + ridge.mean(axis=0)))
    assert p["epistemic_sd"] == pytest.approx(np.vstack([law, ridge]).std(axis=0))
    # the law's ensemble is the default model's: the option only adds
    assert plain.predict_frame(test)["raw"] == pytest.approx(law.mean(axis=0))
    model.save(tmp_path / "m.pkl")
    assert SurrogateModel.load(tmp_path / "m.pkl").predict_frame(test)["raw"] == pytest.approx(p["raw"])
    # a model pickled before the option existed loads as a plain one
    state = plain.__getstate__()
    del state["ridge"], state["ridge_regressors"]
    old = SurrogateModel.__new__(SurrogateModel)
    old.__setstate__(state)
    assert old.predict_frame(test)["raw"] == pytest.approx(plain.predict_frame(test)["raw"])
    # the ridge sits on the law: without it, one ensemble on val_bpb itself (format 2's objective)
    no_law = fit_surrogate(df, opts, scaling_law=False)
    assert no_law.law is None and no_law.ridge is None and no_law.ridge_regressors == []
