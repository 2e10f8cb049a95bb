"""`centaur report`: tables checked against numbers computed here, paired statistics, figures, CLI."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner

import centaur
from centaur.cli import app
from centaur.report.collect import runs_from_storage, runs_from_trials_file
from centaur.report.render import build_report
from centaur.report.stats import min_two_sided_p, pairwise

QUAD = Path(__file__).parent / "fixtures" / "quadratic" / "train.py"
TRIALS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "paper_trials_seeds01.json"

# method -> seed -> trials as (status, value, cost_s, noise_free)
DATA = {
    "alpha": {
        0: [("ok", 1.00, 300, 0.99), ("oom", None, 20, None), ("ok", 0.95, 300, 0.96)],
        1: [("ok", 0.97, 300, 0.97), ("ok", 0.93, 300, 0.94), ("crash", None, 5, None)],
        2: [("oom", None, 10, None), ("ok", 0.96, 300, 0.95), ("ok", 0.99, 300, 0.98)],
    },
    "beta": {
        0: [("ok", 0.99, 300, 0.99), ("ok", 0.98, 300, 0.985), ("ok", 0.985, 300, 0.98)],
        1: [("ok", 0.975, 300, 0.97), ("oom", None, 30, None), ("ok", 0.99, 300, 0.99)],
        2: [("ok", 0.98, 300, 0.982), ("ok", 0.97, 300, 0.975), ("ok", 0.972, 300, 0.971)],
    },
}


def _write_studies(url: str, data: dict = DATA, budget_s: float = 1000.0) -> None:
    """Studies recorded the way the study loop records them (value, penalty, status, cost_s user attrs)."""
    storage = centaur.study.storage.open_storage(url)
    dist = {"x": FloatDistribution(0.0, 1.0)}
    for method, seeds in data.items():
        for seed, trials in seeds.items():
            study = optuna.create_study(storage=storage, study_name=f"t-{method}-seed{seed}")
            for key, value in (("method", method), ("seed", seed), ("budget_s", budget_s), ("task", "toy")):
                study.set_user_attr(key, value)
            for status, value, cost, nf in trials:
                study.add_trial(optuna.trial.create_trial(
                    params={"x": 0.5}, distributions=dist, value=value if status == "ok" else 100.0,
                    user_attrs={"status": status, "cost_s": cost, "noise_free": nf, "llm_calls": 0},
                ))


def _row(md: str, method: str) -> dict[str, str]:
    """The per-method table row of METHOD, by column header."""
    header = None
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "method" and header is None:
            header = cells
        elif header and cells and cells[0] == method:
            return dict(zip(header, cells, strict=True))
    raise AssertionError(f"no row for {method} in\n{md}")


def test_method_table_matches_independent_numbers(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'b.journal'}"
    _write_studies(url)
    rep = build_report(runs_from_storage(url), tmp_path / "out", title="toy", source=url)
    md = rep.markdown.read_text()
    for method, seeds in DATA.items():
        bests, nfs, fails, n = [], [], 0, 0
        for trials in seeds.values():
            ok = [(v, nf) for s, v, _, nf in trials if s == "ok"]
            v, nf = min(ok)
            bests.append(v)
            nfs.append(nf)
            fails += sum(s != "ok" for s, *_ in trials)
            n += len(trials)
        row = _row(md, method)
        assert row["seeds"] == "3"
        assert row["best val_bpb (mean ± std)"] == f"{statistics.mean(bests):.4f} ± {statistics.pstdev(bests):.4f}"
        assert row["noise-free at best (mean ± std)"] == f"{statistics.mean(nfs):.4f} ± {statistics.pstdev(nfs):.4f}"
        assert row["OOM% (all failures)"] == f"{100 * fails / n:.1f}%"
        assert row["LLM calls / seed"] == "0.0" and "wall s / study" not in row  # no bench seconds recorded
    assert _row(md, "alpha")["failure classes (all seeds)"] == "crash 1, oom 2"
    for name in ("convergence.png", "ranks.png", "incumbents.png", "finals.png"):
        png = tmp_path / "out" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    html = rep.html.read_text()
    assert "<table>" in html and 'src="convergence.png"' in html
    # three seeds: no pair can be significant, and the report says so
    assert "cannot be significant" in md and "Too few seeds" in md


def test_budget_cut_counts_only_trials_started_within_the_budget(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'b.journal'}"
    # the second trial starts at 300 s (inside a 500 s budget); the third starts at 600 s: not counted
    _write_studies(url, {"m": {0: [("ok", 1.0, 300, None), ("ok", 0.9, 300, None), ("ok", 0.5, 300, None)]}},
                   budget_s=500.0)
    (run,) = runs_from_storage(url)
    assert len(run.counted) == 2 and run.best == 0.9


def test_wilcoxon_exact_and_small_n_is_stated() -> None:
    from centaur.report.collect import Run, TrialRecord

    def runs(method: str, values: list[float]) -> list[Run]:
        return [Run(f"{method}{i}", method, i, "toy", None, [TrialRecord(0, "ok", v, 1.0)])
                for i, v in enumerate(values)]

    a6 = [0.90, 0.91, 0.92, 0.93, 0.94, 0.95]
    b6 = [1.00, 1.02, 1.04, 1.06, 1.08, 1.10]  # A better on every seed, no tied differences
    (p,) = pairwise(runs("a", a6) + runs("b", b6), ["a", "b"])
    assert p.n == 6 and p.wins_a == 6 and p.p_method == "exact"
    assert p.p_two_sided == pytest.approx(2 / 2**6) and p.p_a_better == pytest.approx(1 / 2**6)
    assert p.can_be_significant and "significant at the 0.05 level" in p.note
    d = np.array(a6) - np.array(b6)
    assert p.delta == pytest.approx(d.mean()) and p.ci_low <= d.mean() <= p.ci_high
    assert d.min() <= p.ci_low and p.ci_high <= d.max()
    (q,) = pairwise(runs("a", a6[:5]) + runs("b", b6[:5]), ["a", "b"])
    assert q.n == 5 and not q.can_be_significant and q.p_two_sided == pytest.approx(2 / 2**5)
    assert "cannot be significant" in q.note and "0.0625" in q.note
    assert min_two_sided_p(5) > 0.05 >= min_two_sided_p(6)


@pytest.mark.slow
def test_report_of_a_real_tune_study_through_the_cli(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    centaur.tune(QUAD, method="random", budget="4s", run_dir=runs_dir)
    res = CliRunner().invoke(app, ["report", str(runs_dir), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    (run,) = runs_from_storage(runs_dir)
    assert len(run.counted) == 4
    assert _row(md, "random")["best val_bpb (mean ± std)"] == f"{run.best:.4f} ± 0.0000"
    assert (tmp_path / "rep" / "incumbents.png").exists() and not (tmp_path / "rep" / "ranks.png").exists()


def test_report_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()

    def out(args: list[str]) -> str:
        res = runner.invoke(app, ["report", *args, "-o", str(tmp_path / "rep")])
        assert res.exit_code == 2, res.output
        return " ".join(res.output.split())  # rich wraps long lines

    assert "has no bench.journal, bench.db or study.db" in out([str(tmp_path)])
    assert "--from-trials" in out([])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert "expected a non-empty object" in out(["--from-trials", str(bad)])
    assert "no such directory" in out([str(tmp_path / "missing")])


@pytest.mark.slow
@pytest.mark.skipif(not TRIALS.is_file(), reason="the reference study's trials file is not here")
def test_report_from_the_reference_trials_file(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", "--from-trials", str(TRIALS), "-o", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "ref" / "report.md").read_text()
    raw = json.loads(TRIALS.read_text())
    for method in ("TPE", "Random"):
        bests, fails, n = [], 0, 0
        for trials in raw[method].values():
            used, best = 0.0, None
            for t in sorted(trials, key=lambda t: t["tid"]):
                if used >= 86400:
                    break
                used += t["wt"]
                n += 1
                ok = t["success"] and t["val_bpb"] is not None and t["val_bpb"] < 100
                fails += not ok
                if ok and (best is None or t["val_bpb"] < best):
                    best = t["val_bpb"]
            bests.append(best)
        row = _row(md, method)
        assert row["best val_bpb (mean ± std)"] == f"{statistics.mean(bests):.4f} ± {statistics.pstdev(bests):.4f}"
        assert row["OOM% (all failures)"] == f"{100 * fails / n:.1f}%"
        assert "LLM calls / seed" not in row and "noise-free at best (mean ± std)" not in row  # not in the file
    assert re.search(r"\| TPE vs Random \| 2 \|", md) or re.search(r"\| Random vs TPE \| 2 \|", md)
    assert "cannot be significant" in md
    assert len(runs_from_trials_file(TRIALS)) == sum(len(s) for s in raw.values())


def test_curves_and_average_ranks_on_a_grid() -> None:
    from centaur.report.collect import Run, TrialRecord
    from centaur.report.stats import average_ranks, curve_on_grid

    def run(method: str, seed: int, values: list[float | None], budget: float = 400.0) -> Run:
        return Run(f"{method}{seed}", method, seed, "toy", budget,
                   [TrialRecord(i, "ok" if v is not None else "oom", v, 100.0) for i, v in enumerate(values)])

    grid = np.array([0.0, 50.0, 100.0, 150.0, 250.0, 399.0])
    a = run("a", 0, [None, 2.0, 1.0, 1.5])  # trials end at 100, 200, 300, 400 s
    np.testing.assert_array_equal(curve_on_grid(a, grid, 400.0), [np.nan, np.nan, np.nan, np.nan, 2.0, 1.0])
    short = run("a", 1, [3.0], budget=400.0)  # spent 100 of 400 s: no value past its end
    np.testing.assert_array_equal(curve_on_grid(short, grid, 400.0), [np.nan, np.nan, 3.0, np.nan, np.nan, np.nan])
    runs = [run("a", s, [1.0, 0.5, 0.4, 0.3]) for s in (0, 1)] + [run("b", s, [2.0, 1.0, 0.9, 0.8]) for s in (0, 1)]
    ranks, seeds = average_ranks(runs, grid, 400.0)
    assert seeds == [0, 1]
    np.testing.assert_array_equal(ranks["a"], [1.5, 1.5, 1, 1, 1, 1])  # tied (no success yet), then a leads
    np.testing.assert_array_equal(ranks["b"], [1.5, 1.5, 2, 2, 2, 2])


def test_cli_merges_several_benches_and_refuses_a_study_given_twice(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from centaur.cli import app

    a, b = f"journal:{tmp_path / 'a.journal'}", f"journal:{tmp_path / 'b.journal'}"
    _write_studies(a, {"alpha": DATA["alpha"]})
    _write_studies(b, {m: s for m, s in DATA.items() if m != "alpha"})
    out = CliRunner().invoke(app, ["report", a, b, "-o", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert all(_row(md, m)["seeds"] == "3" for m in DATA)  # every method of both benches, in one table
    twice = CliRunner().invoke(app, ["report", a, a, "-o", str(tmp_path / "out2")])
    assert twice.exit_code == 2 and "in two targets" in twice.output


def test_report_shows_agent_code_noise_margin_and_each_decision(tmp_path):
    from centaur.report.collect import runs_from_storage
    from centaur.report.render import agent_code_md

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ac")
    study.set_user_attr("method", "agent-code")
    study.set_user_attr("agent_code:noise_pairs", [[3.0, 3.04]])
    study.set_user_attr("agent_code:noise_sd", 0.0283)
    study.set_user_attr("agent_code:margin", 0.0566)
    study.set_user_attr("agent_code:rule", "kept when the mean of two runs beats the best by the margin")
    for value, decision, improvement in [(3.02, "baseline", None), (2.99, "reverted", 0.03), (2.90, "kept", 0.12)]:
        attrs = {"status": "ok", "cost_s": 1.0, "agent_decision": decision}
        if improvement is not None:
            attrs.update(agent_improvement=improvement, agent_margin=0.0566)
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    text = "\n".join(agent_code_md(runs_from_storage(tmp_path / "study.db")))
    assert "noise of one run 0.0283 (from 1 pair(s)" in text and "margin 0.0566" in text
    assert "| 1 | reverted | 2.9900 | +0.0300 | 0.0566 |" in text and "| 2 | kept | 2.9000 | +0.1200 | 0.0566 |" in text
