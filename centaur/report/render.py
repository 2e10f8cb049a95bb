"""Writing a report: Markdown text, the same as HTML, and the PNG figures beside them."""

from __future__ import annotations

import datetime as dt
import html
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from centaur.report import figures
from centaur.report.collect import Run
from centaur.report.proposals import proposal_rows, proposals_md
from centaur.report.stats import MethodRow, PairStat, common_budget, instruments, method_table, pairwise
from centaur.units import format_duration

if TYPE_CHECKING:
    from centaur.surrogate.instrument import Instrument

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #bbb;padding:4px 8px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%}
code{background:#f4f4f4;padding:1px 3px}"""


@dataclass
class Report:
    markdown: Path
    html: Path
    figures: list[Path]
    rows: list[MethodRow]
    pairs: list[PairStat]


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def method_rows_md(rows: list[MethodRow], metric: str) -> str:
    """The per-method table; a column nobody has data for (noise-free, LLM use, bench seconds) is left out."""

    def num(x: float | None, fmt: str = ".1f") -> str:
        return "-" if x is None else format(x, fmt)

    columns = [
        ("method", lambda r: r.method),
        ("seeds", lambda r: str(r.n_seeds)),
        (f"best {metric} (mean ± std)", lambda r: _pm(r.best_mean, r.best_std)),
        ("noise-free at best (mean ± std)", lambda r: _pm(r.noise_free_mean, r.noise_free_std)),
        ("normalised regret (mean ± std)", lambda r: _pm(r.regret_mean, r.regret_std, 3)),
        ("best trial's distance to the data (mean, max)",
         lambda r: "-" if r.distance_mean is None else f"{r.distance_mean:.3f}, {r.distance_max:.3f}"),
        ("best trial's epistemic sd (mean, max)",
         lambda r: "-" if r.epistemic_mean is None else f"{r.epistemic_mean:.4f}, {r.epistemic_max:.4f}"),
        ("OOM% (all failures)", lambda r: f"{r.fail_pct:.1f}%"),
        ("failure classes (all seeds)",
         lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r.failures.items())) or "none"),
        ("trials / seed", lambda r: f"{r.trials_mean:.1f}"),
        ("LLM calls / seed", lambda r: num(r.llm_calls_mean)),
        ("LLM s / seed", lambda r: num(r.llm_seconds_mean)),
        ("fallbacks / seed", lambda r: num(r.fallbacks_mean)),
        ("wall s / study", lambda r: _pm(r.seconds_mean, r.seconds_std, 2)),
    ]
    cells = [[f(r) for _, f in columns] for r in rows]
    keep = [i for i, (name, _) in enumerate(columns)
            if i < 3 or name.startswith(("OOM", "failure", "trials")) or any(c[i] != "-" for c in cells)]
    return _table([columns[i][0] for i in keep], [[c[i] for i in keep] for c in cells])


NOT_RESOLVED = "not resolved by this benchmark"


def resolution_mark(p: PairStat) -> str:
    """The mark beside the Wilcoxon result: the surrogate cannot vouch for a difference below its error."""
    if p.resolved is None:
        return "-"
    rmse = f"{p.resolution_rmse:.4f}"
    return f"resolved (≥ {rmse})" if p.resolved else f"**{NOT_RESOLVED}** (< {rmse})"


def pairs_md(pairs: list[PairStat]) -> str:
    resolution = any(p.resolved is not None for p in pairs)  # surrogate studies with an instrument record
    body = []
    for p in pairs:
        ci = "-" if p.ci_low is None else f"[{p.ci_low:+.4f}, {p.ci_high:+.4f}]"
        row = [
            f"{p.a} vs {p.b}", str(p.n), f"{p.mean_a:.4f}", f"{p.mean_b:.4f}", f"{p.delta:+.4f}", ci,
            f"{p.wins_a} / {p.wins_b}", _p(p.p_two_sided), _p(p.p_a_better), p.p_method if p.p_two_sided else "-",
            p.note,
        ]
        if resolution:
            row += ["-" if p.nf_delta is None else f"{p.nf_delta:+.4f}", resolution_mark(p)]
        body.append(row)
    header = ["A vs B", "n", "mean A", "mean B", "Δ = A − B", "95% bootstrap CI of Δ", "seeds A better / B better",
              "p two-sided", "p one-sided (A < B)", "test", "conclusion"]
    if resolution:
        header += ["Δ noise-free", f"resolution (abs Δ noise-free vs {_basis(pairs)} RMSE)"]
    return _table(header, body)


def _basis(pairs: list[PairStat]) -> str:
    """Which held-out RMSE the marks use: cross-seed, or LORO when a record predates the cross-seed one."""
    return "LORO" if any(p.resolution_basis == "leave-one-run-out" for p in pairs) else "cross-seed"


def _bold_md(text: str) -> str:
    return f"**{text}**"


def _italic_md(text: str) -> str:
    return f"*{text}*"


def instrument_text(inst: Instrument, strong: Callable[[str], str] = _bold_md,
                    emph: Callable[[str], str] = _italic_md) -> str:
    """The "Instrument resolution" paragraph: how finely the surrogate resolves differences, and where the
    normalised regret's 0 and 1 are. STRONG marks the numbers that matter and EMPH the terms defined
    (Markdown by default)."""
    b = inst.best_known

    def f(x: object, nd: int = 4) -> str:
        return f"{x:.{nd}f}" if isinstance(x, (int, float)) else "-"

    def fidelity(rec: dict, what: str, mark: bool) -> str:
        comp, whole = rec.get("competitive", {}), rec.get("all", {})
        s = strong if mark else str
        return (f"{what}: in the competitive region (true val_bpb < {rec.get('competitive_below', 0.99)}, "
                f"n = {comp.get('n', '?')}) RMSE {s(f(comp.get('rmse_pooled')))} and Spearman "
                f"{s(f(comp.get('spearman_pooled'), 3))} pooled ({f(comp.get('spearman_mean'), 3)} as the mean of "
                f"{comp.get('folds_with_spearman', '?')} folds); over all {whole.get('n', '?')} successful trials "
                f"RMSE {f(whole.get('rmse_pooled'))}, Spearman {f(whole.get('spearman_pooled'), 3)}")

    def signed(x: object) -> str:
        return f"{x:+.4f}" if isinstance(x, (int, float)) else "-"

    rmse = f(inst.comp_rmse)
    cross = inst.resolution_basis == "cross-seed"
    parts = []
    if cross:
        cs = inst.cross_seed
        worst = cs.get("competitive", {}).get("max_abs_bias")
        min_n = cs.get("competitive", {}).get("bias_min_n") or 10
        runs = [r for r in cs.get("runs", []) if (r.get("comp_n") or 0) >= min_n]
        per_run = "; ".join(f"{r['name']} {f(r.get('comp_spearman'), 2)} / {f(r.get('comp_rmse'))} / "
                            f"{signed(r.get('comp_bias'))} (n = {r['comp_n']})" for r in runs)
        parts.append(fidelity(cs, "Cross-seed validation of this surrogate (fitted on one seed of the reference "
                                  "study, predicting the other seed's novel configurations; the resolution)", True)
                     + (f". Per held-out run, competitive Spearman / RMSE / bias (predicted − true): {per_run}; "
                        f"largest |bias| {strong(f(worst))} (runs with at least {min_n} competitive trials)"
                        if runs else "") + ". ")
    parts.append(fidelity(inst.loro, f"Leave-one-run-out validation ({inst.loro.get('folds', '?')} folds, each "
                          "run held out and predicted by a fit on the others, novel configurations only"
                          + ("; finer than across seeds, because the other seed's run of the same method is "
                             "in every training set)" if cross else "; this record predates the cross-seed "
                             "validation and the resolution is read from it)"), not cross) + ". ")
    support = inst.extra.get("support_threshold")
    evals = b.get("evaluations")
    evals_txt = f"{evals:,}" if isinstance(evals, int) else "?"
    basis = "cross-seed" if cross else "leave-one-run-out"
    return "".join(parts) + (
        f"Best known in-support noise-free value "
        f"{strong(f(inst.best_value))} (CMA-ES on the noise-free surrogate, {evals_txt} "
        f"evaluations; distance to the data {f(b.get('distance_to_data'), 3)}"
        + (f", support threshold {f(support, 3)}" if support is not None else "")
        + f"); baseline, the space's defaults, {strong(f(inst.baseline_value))}. {emph('Normalised regret')} = "
        "(noise-free value at the best trial − best known) / (baseline − best known): 0 is the best known "
        "configuration, 1 the defaults, negative below the best known. A pairwise comparison is marked "
        f"{emph(NOT_RESOLVED)} when the absolute paired mean difference of the noise-free values at the best trials "
        f"is smaller than the {basis} competitive-region RMSE ({rmse}): below the surrogate's own error where the "
        "methods compete, the surrogate cannot be trusted to order the two on the real task, whatever the Wilcoxon p. "
        "The per-method table's distance of the best trial to the data says where a method's incumbents lie: "
        "near the reference runs' trials (the best known sits at "
        f"{f(b.get('distance_to_data'), 3)}) the surrogate interpolates what was measured; a method whose "
        "incumbents lie farther out than the others' may be exploiting the surrogate's error rather than the task. "
        "The epistemic sd there (the spread of the surrogate's ensemble members) says the same from the model's "
        "side: across seeds, competitive trials where the members disagree more are predicted worse "
        "(docs/surrogate.md, \"Across seeds\"), so a method whose best trials carry a larger spread is measured "
        "less reliably than one whose best trials carry a small one."
    )


def instrument_md(runs: list[Run]) -> list[str]:
    """The section, or nothing for runs without an instrument record (real scripts, a trials file)."""
    found = instruments(runs)
    if not found:
        return []
    parts = ["## Instrument resolution"]
    for inst in found:
        head = f"Record `{inst.fingerprint}`: " if len(found) > 1 else ""
        parts.append(head + instrument_text(inst))
    if any(r.instrument is None for r in runs):
        parts.append("Some runs carry no instrument record: they have no regret, and their comparisons no mark.")
    return parts


def runs_md(runs: list[Run]) -> str:
    regret = any(r.regret is not None for r in runs)
    body = []
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        bt = r.best_trial
        row = [
            r.name, r.method, str(r.seed), str(len(r.counted)), "-" if bt is None else f"{bt.value:.4f}",
            "-" if bt is None or bt.noise_free is None else f"{bt.noise_free:.4f}",
        ]
        row += ["-" if r.regret is None else f"{r.regret:.3f}"] if regret else []
        row += ["-" if bt is None else str(bt.number), f"{100 * r.failure_share:.1f}%", f"{r.used_s / 3600:.2f}",
                "-" if r.seconds is None else f"{r.seconds:.2f}"]
        body.append(row)
    header = ["study", "method", "seed", "trials", "best", "noise-free at best", *(["regret"] if regret else []),
              "best trial", "failed", "budget used (h)", "wall s"]
    return _table(header, body)


def verification_md(runs: list[Run]) -> list[str]:
    """"The values that ran": per run, how many trials ran the values they record (script tasks only)."""
    rows = []
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        verdicts = Counter(t.verified for t in r.counted
                           if t.verified and (t.status == "ok" or t.verified == "overridden"))  # fmt: skip
        if verdicts:
            ok = sum(t.status == "ok" for t in r.counted)
            rows.append([r.name, str(verdicts["verified"]), str(verdicts["unverified"]), str(verdicts["overridden"]),
                         str(ok)])  # fmt: skip
    if not rows:
        return []
    return [
        "## The values that ran",
        "Each trial's process recorded the values the script really used (docs/your-script.md, \"The value that "
        "ran\"). Of the successful trials: *verified*, all equal the recorded ones; *unverified*, some could not "
        "be seen (the study records which and why). *Overridden*: trials whose script ran other values (a "
        "failure of its own class, which stopped its study).",
        _table(["study", "verified", "unverified", "overridden", "ok trials"], rows),
    ]


def agent_code_md(runs: list[Run]) -> list[str]:
    """agent-code's keep rule per study: the noise of honest runs, the margin, and each run edit's decision
    with how much it beat the best by."""
    parts: list[str] = []
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        decided = [t for t in r.counted if t.decision in ("kept", "reverted") and t.improvement is not None]
        if not r.noise and not decided:
            continue
        if not parts:
            parts.append("## agent-code: edits kept beyond the noise")
        pairs = r.noise.get("noise_pairs") or []
        noise = r.noise.get("noise_sd")
        margin = r.noise.get("margin")
        parts.append(
            f"**{r.name}**: noise of one run {'-' if noise is None else f'{noise:.4f}'} (from {len(pairs)} pair(s) "
            f"of runs of one script), margin {'-' if margin is None else f'{margin:.4f}'}. Rule: "
            f"{r.noise.get('rule', 'not recorded')}."
        )
        if decided:
            rows = [
                [str(t.number), t.decision or "", "-" if t.value is None else f"{t.value:.4f}",
                 f"{t.improvement:+.4f}", "-" if t.margin is None else f"{t.margin:.4f}"]
                for t in decided
            ]  # fmt: skip
            parts.append(_table(["trial", "decision", "value", "beat the best by", "margin"], rows))
    return parts


def winners_curse_md(runs: list[Run]) -> str:
    """Per run: how often its best configuration was evaluated, the mean of those evaluations, and the gap
    between the best single value and that mean. A best that is the minimum of many noisy evaluations of
    one configuration is lower than what that configuration gives on average (the winner's curse)."""
    body = []
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        n, mean = r.best_repeats()
        if r.best is None or mean is None:
            continue
        body.append([r.method, str(r.seed), f"{r.best:.4f}", str(n), f"{mean:.4f}", f"{r.best - mean:+.4f}"])
    return _table(["method", "seed", "best single value", "evaluations of that configuration",
                   "their mean", "best − mean"], body)


def winners_curse_summary(runs: list[Run]) -> list[str]:
    """One line per method whose bests were evaluated more than once on some seed."""
    lines = []
    by: dict[str, list[tuple[int, float, float]]] = {}
    for r in runs:
        n, mean = r.best_repeats()
        if r.best is not None and mean is not None:
            by.setdefault(r.method, []).append((n, r.best, mean))
    for method, rows in sorted(by.items()):
        repeated = [x for x in rows if x[0] > 1]
        if repeated:
            gap = sum(b - m for _, b, m in rows) / len(rows)
            most = max(n for n, _, _ in rows)
            lines.append(f"- **{method}**: the best configuration was evaluated more than once on {len(repeated)} of "
                         f"{len(rows)} seeds (up to {most} times); mean best {_mean(rows, 1):.4f} "
                         f"against a mean of those configurations' evaluations of {_mean(rows, 2):.4f} "
                         f"(gap {gap:+.4f}).")
    return lines


def _mean(rows: list[tuple[int, float, float]], i: int) -> float:
    return sum(x[i] for x in rows) / len(rows)


def build_report(runs: list[Run], out_dir: Path | str, *, title: str, source: str, metric: str = "val_bpb") -> Report:
    """Write report.md, report.html and the PNGs into OUT_DIR."""
    import markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = method_table(runs)
    order = [r.method for r in rows]
    pairs = pairwise(runs, order)
    budget_s = common_budget(runs)
    figs: list[Path] = [figures.convergence(runs, order, budget_s, metric, out / "convergence.png")]
    rank_png = figures.ranks(runs, order, budget_s, out / "ranks.png")
    figs += [rank_png] if rank_png else []
    figs.append(figures.incumbents(runs, order, budget_s, metric, out / "incumbents.png"))
    figs.append(figures.finals(runs, order, metric, out / "finals.png"))
    tasks = sorted({r.task for r in runs if r.task})
    small = [p for p in pairs if not p.can_be_significant and p.n >= 1]
    regret = any(r.regret_mean is not None for r in rows)
    parts = [
        f"# {title}",
        f"Source: `{source}`. Task: {', '.join(tasks) or 'unknown'}. Budget per run: {format_duration(budget_s)} "
        f"of counted trial cost. {len(runs)} run(s), {len(rows)} method(s). Generated "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        *instrument_md(runs),
        "## Results per method",
        method_rows_md(rows, metric),
        f"*Best {metric}*: the lowest observed value among the successful trials that started within the budget, "
        "mean ± population std (ddof 0) over seeds. *Noise-free at best*: the surrogate's value without "
        "observation noise for that same trial (surrogate studies). "
        + ("*Normalised regret*: of that noise-free value, between the best known (0) and the baseline (1); see "
           "\"Instrument resolution\". " if regret else "")
        + "*OOM%*: failed trials of any cause as a "
        "share of all trials, as the reference study counts it; the failure classes say which. LLM columns and "
        "fallbacks are sums per run, averaged over seeds. *Wall s / study*: benchmark wall seconds per study.",
        *verification_md(runs),
        *agent_code_md(runs),
        "## Convergence",
        "![best so far against the cumulative budget, mean and ±1 std over seeds](convergence.png)",
    ]
    if rank_png:
        parts += ["## Average rank", "![average rank of each method over time](ranks.png)"]
    parts += [
        "## Incumbent traces",
        "![incumbent trace of the best seed of each method](incumbents.png)",
        "## Final values per seed",
        "![best value of every seed](finals.png)",
        "## Pairwise statistics",
        "Paired by seed over the seeds both methods have. Wilcoxon signed-rank test (scipy, zero_method "
        "\"wilcox\"; exact p-values when the paired differences have no ties), two-sided and one-sided "
        "(H1: A lower than B); 95% percentile bootstrap confidence interval of the mean paired difference.",
        pairs_md(pairs) if pairs else "Only one method: nothing to compare.",
    ]
    if small:
        parts.append(
            f"**Too few seeds:** {len(small)} of {len(pairs)} comparisons cannot reach p ≤ 0.05 whatever the "
            "data (with n paired seeds the smallest exact two-sided p is 2/2^n, above 0.05 for n < 6). "
            "Run more seeds before calling a difference significant."
        )
    unresolved = [p for p in pairs if p.resolved is False]
    if any(p.resolved is not None for p in pairs):
        parts.append(
            f"*Resolution*: Δ noise-free is the mean paired difference of the noise-free values at the best trials; "
            f"a comparison is *{NOT_RESOLVED}* when its absolute value is smaller than the surrogate's "
            f"competitive-region RMSE on held-out runs (\"Instrument resolution\"). {len(unresolved)} of "
            f"{len(pairs)} comparisons are not resolved."
        )
    proposals = proposal_rows(runs)
    if proposals:
        parts += [
            "## Proposal sources",
            "Who proposed each trial of the runs with LLM turns, per method (counts per seed) and per seed: *LLM "
            "turns*, trials whose proposal source starts with \"llm\"; *LLM proposals run*, the LLM's "
            "configuration ran (\"llm\"); *vetoed*, it was predicted to run out of memory and CMA-ES's proposal "
            "ran (\"llm-fallback:predicted-oom\"); *unusable*, the answer could not be used and CMA-ES's "
            "proposal ran (\"llm-fallback:cmaes\"); the OOM share of the LLM's proposals that ran against "
            "CMA-ES's own turns (\"cmaes\"); the share of LLM turns at the end (the last trial's `llm_share`, "
            "which adaptive trust moves with the LLM's record); and who proposed each seed's best trial.",
            proposals_md(proposals),
        ]
    curse = winners_curse_summary(runs)
    parts += [
        "## Winner's curse: repeated evaluations of the best configuration",
        "How often each run's best configuration was evaluated, the mean of those evaluations, and the gap between "
        "the best single value and that mean. With noisy evaluations, the minimum of many draws of one configuration "
        "lies below what it gives on average: a method that re-evaluates its incumbent reports part of the noise "
        "as progress.",
        *(curse or ["No run evaluated its best configuration more than once."]),
        winners_curse_md(runs),
    ]
    parts += ["## Runs", runs_md(runs)]
    text = "\n\n".join(parts) + "\n"
    md_path = out / "report.md"
    md_path.write_text(text, encoding="utf-8")
    body = markdown.markdown(text, extensions=["tables"])
    html_path = out / "report.html"
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n",
        encoding="utf-8",
    )
    return Report(md_path, html_path, figs, rows, pairs)
