"""The surrogate's instrument record (resolution, best known, baseline): regret and the not-resolved mark in
the report, the proposal-source section of LLM runs, and the record cached beside the model and reused."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution

from centaur.report.collect import runs_from_storage
from centaur.report.render import NOT_RESOLVED, build_report
from centaur.study.storage import open_storage

TRIALS = Path("/work/shared/data/paper_trials_seeds01.json")
needs_trials = pytest.mark.skipif(not TRIALS.is_file(), reason="the reference study's trials file is not here")

BEST, BASE, RMSE, LORO_RMSE = 0.970, 0.990, 0.005, 0.001


def _record(comp_rmse: float | None = RMSE) -> dict[str, Any]:
    """A record whose cross-seed competitive RMSE is COMP_RMSE (None: an old record, LORO only, at RMSE)."""
    loro_rmse = LORO_RMSE if comp_rmse is not None else RMSE
    rec = {"key": {"data_sha256": "x" * 64, "fit_options": {"n_models": 5}},
           "loro": {"folds": 16, "competitive_below": 0.99,
                    "all": {"n": 4000, "spearman_pooled": 0.96, "spearman_mean": 0.88, "rmse_pooled": 0.026},
                    "competitive": {"n": 1000, "spearman_pooled": 0.73, "spearman_mean": 0.57,
                                    "folds_with_spearman": 8, "rmse_pooled": loro_rmse}},
           "best_known": {"value": BEST, "config": {"DEPTH": 6}, "distance_to_data": 0.12, "evaluations": 5000},
           "baseline": {"value": BASE, "config": {"DEPTH": 8}, "feasible": True}}
    if comp_rmse is not None:
        rec["cross_seed"] = {
            "folds": 2, "competitive_below": 0.99,
            "all": {"n": 4000, "spearman_pooled": 0.97, "spearman_mean": 0.97, "rmse_pooled": 0.028},
            "competitive": {"n": 1070, "spearman_pooled": 0.79, "spearman_mean": 0.79, "folds_with_spearman": 2,
                            "rmse_pooled": comp_rmse, "bias_pooled": 0.001, "max_abs_bias": 0.0042,
                            "bias_min_n": 10},
            "runs": [{"name": "TPE s1", "comp_n": 170, "comp_spearman": 0.65, "comp_rmse": 0.0064,
                      "comp_bias": 0.0042},
                     {"name": "SMAC s0", "comp_n": 3, "comp_spearman": 0.5, "comp_rmse": 0.02, "comp_bias": -0.02}]}
    return rec


# method -> seed -> noise-free value of its only (hence best) successful trial
NF = {
    "a": [0.9720, 0.9730, 0.9710, 0.9740, 0.9725, 0.9735],
    "b": [0.9730, 0.9742, 0.9718, 0.9752, 0.9730, 0.9748],  # within 0.002 of a: not resolved at RMSE 0.005
    "c": [0.9850, 0.9830, 0.9860, 0.9840, 0.9870, 0.9820],  # ~0.012 worse than a: resolved
}


def _write(url: str, nf: dict[str, list[float]], record: dict[str, Any] | None,
           trials: dict[tuple[str, int], list[dict[str, Any]]] | None = None) -> None:
    """One study per (method, seed); by default one successful trial whose observed value is its noise-free
    value plus a small offset (so that best observed and noise-free differ)."""
    storage = open_storage(url)
    dist = {"x": FloatDistribution(0.0, 1.0)}
    for method, values in nf.items():
        for seed, v in enumerate(values):
            study = optuna.create_study(storage=storage, study_name=f"t-{method}-seed{seed}")
            attrs: dict[str, Any] = {"method": method, "seed": seed, "budget_s": 10_000.0, "task": "toy"}
            if record is not None:
                attrs["surrogate_instrument"] = record
            for key, value in attrs.items():
                study.set_user_attr(key, value)
            rows = (trials or {}).get((method, seed)) or [
                {"status": "ok", "value": v + 1e-4, "noise_free": v, "source": method}]
            for t in rows:
                ok = t["status"] == "ok"
                user = {"status": t["status"], "cost_s": 300.0, "noise_free": t.get("noise_free"),
                        "proposal_source": t["source"]}
                if "distance" in t:
                    user["distance_to_data"] = t["distance"]
                if "sd" in t:
                    user["epistemic_sd"] = t["sd"]
                if "share" in t:
                    user["llm_share"] = t["share"]
                study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist,
                                                          value=t["value"] if ok else 100.0, user_attrs=user))


def _table_rows(md: str, first: str, column: str | None = None) -> list[dict[str, str]]:
    """Rows of the first Markdown table whose header starts with FIRST (and has COLUMN), by column header."""
    header, rows = None, []
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            if header is not None and rows:
                return rows
            continue
        if header is None and cells[0] == first and (column is None or column in cells):
            header = cells
        elif header is not None and not set(cells[0]) <= {"-"}:
            rows.append(dict(zip(header, cells, strict=True)))
    assert header is not None, f"no table starting with {first!r}"
    return rows


def test_regret_and_the_not_resolved_mark(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'b.journal'}"
    _write(url, NF, _record())
    runs = runs_from_storage(url)
    assert all(r.instrument is not None and r.instrument.comp_rmse == RMSE for r in runs)
    rep = build_report(runs, tmp_path / "out", title="toy", source=url)
    md = rep.markdown.read_text()
    methods = {r["method"]: r for r in _table_rows(md, "method")}
    for m, values in NF.items():
        regrets = [(v - BEST) / (BASE - BEST) for v in values]
        cell = methods[m]["normalised regret (mean ± std)"]
        assert cell == f"{statistics.mean(regrets):.3f} ± {statistics.pstdev(regrets):.3f}"
    pairs = {r["A vs B"]: r for r in _table_rows(md, "A vs B")}
    column = "resolution (abs Δ noise-free vs cross-seed RMSE)"
    ab = pairs["a vs b"]
    delta_ab = statistics.mean(x - y for x, y in zip(NF["a"], NF["b"], strict=True))
    assert ab["Δ noise-free"] == f"{delta_ab:+.4f}" and abs(delta_ab) < RMSE
    assert NOT_RESOLVED in ab[column]
    assert "significant at the 0.05 level" in ab["conclusion"]  # Wilcoxon says a beats b on every seed...
    for name in ("a vs c", "b vs c"):  # ... but only these differences exceed the surrogate's error
        assert NOT_RESOLVED not in pairs[name][column] and pairs[name][column].startswith("resolved")
    assert "## Instrument resolution" in md and "1 of 3 comparisons are not resolved" in md
    assert f"RMSE **{RMSE:.4f}**" in md and f"**{BEST:.4f}**" in md and f"**{BASE:.4f}**" in md
    # both fidelities are printed; the marks follow the cross-seed one (a LORO mark at 0.001 would resolve a vs b)
    assert f"RMSE {LORO_RMSE:.4f}" in md and "Leave-one-run-out validation" in md
    assert "TPE s1 0.65 / 0.0064 / +0.0042 (n = 170)" in md and "SMAC s0" not in md  # 3 trials: no bias claim
    runs_table = {(r["method"], r["seed"]): r for r in _table_rows(md, "study")}
    assert runs_table[("c", "0")]["regret"] == f"{(NF['c'][0] - BEST) / (BASE - BEST):.3f}"

    # a larger error leaves every comparison unresolved; the mark follows the record, not a constant
    url2 = f"journal:{tmp_path / 'c.journal'}"
    _write(url2, NF, _record(comp_rmse=0.05))
    md2 = build_report(runs_from_storage(url2), tmp_path / "out2", title="toy", source=url2).markdown.read_text()
    assert all(NOT_RESOLVED in r[column] for r in _table_rows(md2, "A vs B"))

    # a record written before the cross-seed validation existed still marks, against its LORO RMSE, and says so
    url3 = f"journal:{tmp_path / 'd.journal'}"
    _write(url3, NF, _record(comp_rmse=None))
    runs3 = runs_from_storage(url3)
    assert all(r.instrument is not None and r.instrument.resolution_basis == "leave-one-run-out" for r in runs3)
    md3 = build_report(runs3, tmp_path / "out3", title="toy", source=url3).markdown.read_text()
    pairs3 = {r["A vs B"]: r for r in _table_rows(md3, "A vs B")}
    assert NOT_RESOLVED in pairs3["a vs b"]["resolution (abs Δ noise-free vs LORO RMSE)"]
    assert "predates the cross-seed validation" in md3


def test_the_best_trials_distance_to_the_data(tmp_path: Path) -> None:
    """Per method, the mean and the largest distance of the best trial (not of any other) to the data, and the
    surrogate's epistemic sd there."""
    url = f"journal:{tmp_path / 'b.journal'}"
    near = {("a", s): [{"status": "ok", "value": 0.972, "noise_free": 0.972, "source": "a", "distance": d, "sd": sd},
                       {"status": "ok", "value": 0.990, "noise_free": 0.990, "source": "a", "distance": 0.9,
                        "sd": 0.02}]
            for s, (d, sd) in enumerate(((0.10, 0.0004), (0.14, 0.0006)))}
    far = {("b", s): [{"status": "ok", "value": 0.971, "noise_free": 0.971, "source": "b", "distance": d, "sd": 0.002}]
           for s, d in enumerate((0.30, 0.50))}
    _write(url, {"a": [0.0, 0.0], "b": [0.0, 0.0]}, _record(), {**near, **far})
    md = build_report(runs_from_storage(url), tmp_path / "out", title="toy", source=url).markdown.read_text()
    methods = {r["method"]: r for r in _table_rows(md, "method")}
    column = "best trial's distance to the data (mean, max)"
    assert methods["a"][column] == "0.120, 0.140" and methods["b"][column] == "0.400, 0.500"
    spread = "best trial's epistemic sd (mean, max)"
    assert methods["a"][spread] == "0.0005, 0.0006" and methods["b"][spread] == "0.0020, 0.0020"
    assert "epistemic sd there" in md
    assert "exploiting the surrogate's error" in md


def test_runs_without_a_record_keep_the_report_as_it_was(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'b.journal'}"
    _write(url, NF, None)
    md = build_report(runs_from_storage(url), tmp_path / "out", title="toy", source=url).markdown.read_text()
    for absent in ("Instrument resolution", "regret", "Δ noise-free", NOT_RESOLVED, "Proposal sources",
                   "distance to the data", "epistemic sd"):
        assert absent not in md
    assert "noise-free at best (mean ± std)" in md


def test_a_broken_record_is_ignored(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'b.journal'}"
    _write(url, {"a": NF["a"][:2]}, {"key": {}, "loro": {}})  # no best_known / baseline
    assert all(r.instrument is None and r.regret is None for r in runs_from_storage(url))


def _trial(source: str, status: str = "ok", value: float | None = 0.98, share: float | None = None) -> dict:
    t: dict[str, Any] = {"status": status, "value": value, "noise_free": value, "source": source}
    if share is not None:
        t["share"] = share
    return t


def test_proposal_sources_per_method_and_seed(tmp_path: Path) -> None:
    seed0 = [_trial("baseline", value=0.99), _trial("cmaes", value=0.985, share=0.3),
             _trial("cmaes", "oom", None, 0.3), _trial("llm", value=0.975, share=0.3),
             _trial("llm", "oom", None, 0.25), _trial("llm-fallback:predicted-oom", value=0.984, share=0.2),
             _trial("llm-fallback:cmaes", value=0.983, share=0.2), _trial("cmaes", value=0.982, share=0.15)]
    seed1 = [_trial("baseline", value=0.99), _trial("cmaes", value=0.97, share=0.3),
             _trial("llm", value=0.98, share=0.4), _trial("cmaes", value=0.981, share=0.45)]
    trials = {("centaur", 0): seed0, ("centaur", 1): seed1}
    url = f"journal:{tmp_path / 'b.journal'}"
    _write(url, {"centaur": [0.0, 0.0], "tpe": [0.975]}, None, trials)
    md = build_report(runs_from_storage(url), tmp_path / "out", title="toy", source=url).markdown.read_text()
    assert "## Proposal sources" in md
    rows = _table_rows(md, "method", "LLM turns")  # the proposal table, not the per-method results
    assert [r["seed"] for r in rows] == ["all 2", "0", "1"]  # tpe has no LLM turns: not listed
    total, s0, s1 = rows
    assert (s0["trials"], s0["LLM turns"], s0["LLM proposals run"]) == ("8", "4", "2")
    assert (s0["vetoed (predicted OOM)"], s0["unusable (CMA-ES ran)"]) == ("1", "1")
    assert s0["OOM% of LLM proposals"] == "50.0% (1/2)" and s0["OOM% of CMA-ES trials"] == "33.3% (1/3)"
    assert s0["LLM share at the end"] == "15.0%" and s0["source of the best trial"] == "llm"
    assert s1["LLM turns"] == "1" and s1["OOM% of CMA-ES trials"] == "0.0% (0/2)"
    assert s1["source of the best trial"] == "cmaes" and s1["LLM share at the end"] == "45.0%"
    assert total["LLM turns"] == "2.5 / seed" and total["OOM% of LLM proposals"] == "33.3% (1/3)"
    assert total["LLM share at the end"] == "30.0% (mean)" and total["source of the best trial"] == "cmaes 1, llm 1"


def test_shared_attribute_names_agree() -> None:
    from centaur.methods.centaur.trust import SHARE_ATTR
    from centaur.report import collect
    from centaur.surrogate.instrument import INSTRUMENT_ATTR

    assert collect.INSTRUMENT_ATTR == INSTRUMENT_ATTR and collect.SHARE_ATTR == SHARE_ATTR


# -- the record itself: computed once, cached beside the model, reused ---------------------------------


def _fake_holdout(calls: list[int]) -> Any:
    """holdout_validation's answer, without its 16 fits."""

    def fake(path: Any, kinds: Any, **kw: Any) -> dict[str, Any]:
        calls.append(1)
        assert tuple(kinds) == ("run", "seed")
        pooled = {"n": 3971, "spearman": 0.966, "rmse": 0.0261, "feas_acc": 0.999, "comp_n": 1070,
                  "comp_spearman": 0.728, "comp_rmse": 0.0036, "comp_bias": 0.0001}
        mean = {"spearman": 0.878, "comp_spearman": 0.573}
        seed = {"n": 4009, "spearman": 0.973, "rmse": 0.0276, "feas_acc": 0.998, "comp_n": 1070,
                "comp_spearman": 0.796, "comp_rmse": 0.0050, "comp_bias": 0.0012}
        runs = [{"name": "TPE s1", "n": 300, "spearman": 0.9, "comp_n": 173, "comp_spearman": 0.65,
                 "comp_rmse": 0.0064, "comp_bias": 0.0041}]
        return {"holdout": {
            "run": {"folds": [{}] * 16, "pooled": pooled, "mean": mean, "n_defined": {"spearman": 16,
                                                                                      "comp_spearman": 8}},
            "seed": {"folds": [{}] * 2, "runs": runs, "pooled": seed, "mean": {"spearman": 0.975,
                                                                                "comp_spearman": 0.797},
                     "n_defined": {"spearman": 2, "comp_spearman": 2}, "max_abs_comp_bias": 0.0041,
                     "bias_min_n": 10}}}

    return fake


@pytest.fixture(scope="module")
def small_model() -> Any:
    from centaur.surrogate.data import load_trials
    from centaur.surrogate.model import fit_surrogate

    return fit_surrogate(load_trials(TRIALS), n_models=1, n_estimators=60, learning_rate=0.2, clf_estimators=40,
                         cost_estimators=20)


@needs_trials
def test_the_record_is_cached_beside_the_model_and_reused(tmp_path: Path, small_model: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from centaur.space import reference_space
    from centaur.surrogate import instrument as ins
    from centaur.surrogate import validate

    calls: list[int] = []
    monkeypatch.setattr(validate, "holdout_validation", _fake_holdout(calls))
    settings = ins.SearchSettings(restarts=1, generations=4, population=8)
    cache = ins.sidecar_path(tmp_path / "surrogate-model.pkl")
    assert cache.name == "surrogate-model.instrument.json"
    rec = ins.instrument_for(small_model, TRIALS, cache=cache, settings=settings)
    assert calls == [1] and cache.is_file()
    assert rec.comp_rmse == 0.0050 and rec.resolution_basis == "cross-seed"  # the cross-seed one, not LORO's
    assert rec.loro_comp_rmse == 0.0036 and rec.loro["competitive"]["spearman_mean"] == 0.573
    assert rec.cross_seed["runs"][0]["comp_bias"] == 0.0041 and rec.cross_seed["competitive"]["max_abs_bias"] == 0.0041
    assert rec.key["data_sha256"] == small_model.meta["data_sha256"]
    assert rec.key["fit_options"]["n_estimators"] == 60
    # the best known is a configuration the bench can run, in support and feasible, with the value it has
    best = rec.best_known
    space = reference_space()
    assert best["evaluations"] == 6 * 4 * 8 and not space.violations(best["config"])
    out = small_model.evaluate(best["config"], rng=np.random.default_rng(1))
    assert out.feasible and out.in_support and out.noise_free == pytest.approx(best["value"])
    assert best["value"] == min(c["best"] for c in best["per_categorical"])
    assert rec.baseline["value"] == pytest.approx(small_model.evaluate(
        space.defaults(), rng=np.random.default_rng(0)).noise_free)
    assert rec.regret(rec.best_value) == 0.0 and rec.regret(rec.baseline_value) == pytest.approx(1.0)

    again = ins.instrument_for(small_model, TRIALS, cache=cache, settings=settings)
    assert calls == [1] and again == rec  # read back, not recomputed
    assert ins.Instrument.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec

    ins.instrument_for(small_model, TRIALS, cache=cache, settings=ins.SearchSettings(restarts=1, generations=5,
                                                                                     population=8))
    assert calls == [1, 1]  # other search settings: another key, computed again
    cache.write_text("{not json")
    ins.instrument_for(small_model, TRIALS, cache=cache, settings=settings)
    assert calls == [1, 1, 1] and ins.load_cached(cache, ins.instrument_key(small_model, settings)) is not None
    with pytest.raises(ValueError, match="not the data"):
        other = tmp_path / "other.json"
        other.write_text("{}")
        ins.compute_instrument(small_model, other, settings=settings)


@needs_trials
def test_cli_prints_and_writes_the_record(tmp_path: Path, small_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from centaur.cli import app
    from centaur.surrogate import validate

    calls: list[int] = []
    monkeypatch.setattr(validate, "holdout_validation", _fake_holdout(calls))
    model = tmp_path / "m.pkl"
    small_model.save(model)  # the CLI reuses a model file that matches the data
    args = ["surrogate", "instrument", "--trials", str(TRIALS), "--model", str(model), "--json",
            str(tmp_path / "r.json"), "--restarts", "1", "--generations", "2", "--population", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["cross_seed"]["competitive"]["rmse_pooled"] == 0.005 and (tmp_path / "m.instrument.json").is_file()
    assert rec["loro"]["competitive"]["rmse_pooled"] == 0.0036
    assert "best known" in res.output and f"{rec['best_known']['value']:.4f}" in res.output
    assert "0.0050: cross-seed competitive RMSE" in res.output and "TPE s1" in res.output and "+0.0041" in res.output
    res2 = CliRunner().invoke(app, args)
    assert res2.exit_code == 0 and "read from the cache" in res2.output and calls == [1]


@pytest.mark.slow
@needs_trials
def test_bench_attaches_the_record_to_every_study(tmp_path: Path, small_model: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from centaur.bench import run_bench
    from centaur.surrogate import instrument as ins
    from centaur.surrogate import validate

    calls: list[int] = []
    monkeypatch.setattr(validate, "holdout_validation", _fake_holdout(calls))
    real_search = ins.best_known
    small = ins.SearchSettings(restarts=1, generations=3, population=8)
    monkeypatch.setattr(ins, "best_known", lambda model, space, _settings, progress=None: real_search(
        model, space, small, progress))  # the bench's default search, shortened
    small_model.save(tmp_path / "surrogate-model.pkl")  # the bench's cache: loaded, not refitted
    task = f"surrogate:{TRIALS}"
    # a bench run before the record existed, then rerun: its finished studies get the record too
    first = run_bench(task, ["random"], [0, 1], "1h", bench_dir=tmp_path, jobs=1, instrument=False)
    assert first.complete and calls == []
    notes: list[str] = []
    again = run_bench(task, ["random", "tpe"], [0, 1], "1h", bench_dir=tmp_path, jobs=1, notes=notes.append)
    assert again.complete and len(again.skipped) == 2 and calls == [1] and notes
    assert (tmp_path / "surrogate-model.instrument.json").is_file()
    runs = runs_from_storage(tmp_path)
    assert len(runs) == 4 and all(r.instrument is not None and r.regret is not None for r in runs)
    assert len({r.instrument.fingerprint for r in runs}) == 1  # type: ignore[union-attr]
    run_bench(task, ["random", "tpe"], [0, 1, 2], "1h", bench_dir=tmp_path, jobs=1)
    assert calls == [1]  # cached beside the model from then on
    md = build_report(runs_from_storage(tmp_path), tmp_path / "rep", title="b", source="b").markdown.read_text()
    assert "## Instrument resolution" in md and "normalised regret" in md


@needs_trials
def test_a_bench_refuses_studies_run_on_another_surrogate(tmp_path: Path, small_model: Any) -> None:
    """A finished study run on another surrogate model (other fit options, another format) is neither reused
    nor given the new model's record: the bench stops and says why."""
    from centaur.bench import run_bench
    from centaur.bench.grid import BenchError
    from centaur.surrogate.data import load_trials
    from centaur.surrogate.instrument import MODEL_ATTR, model_identity
    from centaur.surrogate.model import fit_surrogate

    small_model.save(tmp_path / "surrogate-model.pkl")
    task = f"surrogate:{TRIALS}"
    first = run_bench(task, ["random"], [0], "1h", bench_dir=tmp_path, jobs=1, instrument=False)
    assert first.complete
    (run,) = runs_from_storage(tmp_path)
    study = optuna.load_study(study_name=run.name, storage=open_storage(first.storage))
    assert study.user_attrs[MODEL_ATTR] == json.loads(json.dumps(model_identity(small_model)))
    again = run_bench(task, ["random"], [0], "1h", bench_dir=tmp_path, jobs=1, instrument=False)
    assert again.skipped == [run.name]  # the same model: the finished study is kept

    other = fit_surrogate(load_trials(TRIALS), n_models=1, n_estimators=20, learning_rate=0.3, clf_estimators=20,
                          cost_estimators=10)
    other.save(tmp_path / "surrogate-model.pkl")  # the bench's cache now holds another model of the same data
    with pytest.raises(BenchError, match="another surrogate model .*other fit options"):
        run_bench(task, ["random"], [0], "1h", bench_dir=tmp_path, jobs=1, instrument=False)
