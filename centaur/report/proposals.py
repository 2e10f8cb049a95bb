"""Who proposed the trials of an LLM run (Centaur, centaur-null): the LLM, CMA-ES, or a fallback.

Every trial of a Centaur study carries `proposal_source`: "cmaes" (CMA-ES's turn), "llm" (the LLM's
proposal ran), "llm-fallback:predicted-oom" (the LLM's proposal was vetoed as a predicted OOM and CMA-ES's
ran), "llm-fallback:cmaes" (the answer was unusable and CMA-ES's ran) or "baseline"; and after the warm-up
`llm_share`, the share of LLM turns that decided it (centaur/methods/centaur/trust.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from centaur.report.collect import Run, TrialRecord

LLM = "llm"
VETOED = "llm-fallback:predicted-oom"
CMAES = "cmaes"


def is_llm_turn(t: TrialRecord) -> bool:
    return t.source.startswith(LLM)


def has_proposals(run: Run) -> bool:
    """A run with LLM turns; other methods' trials carry only their sampler's name."""
    return any(is_llm_turn(t) for t in run.counted)


@dataclass
class ProposalRow:
    method: str
    seed: int | None  # None: every seed of the method together
    n_seeds: int
    trials: int
    llm_turns: int  # trials whose source starts with "llm"
    llm_ran: int  # the LLM's proposal ran
    vetoed: int  # predicted OOM: CMA-ES's proposal ran instead
    unusable: int  # any other fallback: the answer could not be used
    llm_oom: int  # LLM proposals that ran out of memory
    cmaes: int  # CMA-ES's own turns
    cmaes_oom: int
    final_share: float | None  # the last trial's llm_share (mean over seeds for a method)
    best_sources: Counter  # proposal source of each seed's best trial

    @property
    def llm_oom_share(self) -> float:
        return self.llm_oom / self.llm_ran if self.llm_ran else math.nan

    @property
    def cmaes_oom_share(self) -> float:
        return self.cmaes_oom / self.cmaes if self.cmaes else math.nan


def _row(run: Run) -> ProposalRow:
    ts = run.counted
    shares = [t.llm_share for t in ts if t.llm_share is not None]
    best = run.best_trial
    return ProposalRow(
        method=run.method, seed=run.seed, n_seeds=1, trials=len(ts),
        llm_turns=sum(is_llm_turn(t) for t in ts),
        llm_ran=sum(t.source == LLM for t in ts),
        vetoed=sum(t.source == VETOED for t in ts),
        unusable=sum(t.source.startswith(LLM + "-fallback") and t.source != VETOED for t in ts),
        llm_oom=sum(t.source == LLM and t.status == "oom" for t in ts),
        cmaes=sum(t.source == CMAES for t in ts),
        cmaes_oom=sum(t.source == CMAES and t.status == "oom" for t in ts),
        final_share=shares[-1] if shares else None,
        best_sources=Counter([best.source or "?"] if best is not None else []),
    )


def _total(method: str, rows: list[ProposalRow]) -> ProposalRow:
    shares = [r.final_share for r in rows if r.final_share is not None]
    best: Counter = Counter()
    for r in rows:
        best.update(r.best_sources)
    return ProposalRow(
        method=method, seed=None, n_seeds=len(rows), trials=sum(r.trials for r in rows),
        llm_turns=sum(r.llm_turns for r in rows), llm_ran=sum(r.llm_ran for r in rows),
        vetoed=sum(r.vetoed for r in rows), unusable=sum(r.unusable for r in rows),
        llm_oom=sum(r.llm_oom for r in rows), cmaes=sum(r.cmaes for r in rows),
        cmaes_oom=sum(r.cmaes_oom for r in rows),
        final_share=sum(shares) / len(shares) if shares else None, best_sources=best,
    )


def proposal_rows(runs: list[Run]) -> list[ProposalRow]:
    """Per method with LLM turns: a row for all its seeds (counts summed, shares pooled), then one per seed."""
    out: list[ProposalRow] = []
    by: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.method, r.seed)):
        if has_proposals(r):
            by.setdefault(r.method, []).append(r)
    for method, rs in by.items():
        rows = [_row(r) for r in rs]
        out += [_total(method, rows), *rows]
    return out


def _share(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def proposals_md(rows: list[ProposalRow]) -> str:
    header = ["method", "seed", "trials", "LLM turns", "LLM proposals run", "vetoed (predicted OOM)",
              "unusable (CMA-ES ran)", "OOM% of LLM proposals", "OOM% of CMA-ES trials", "LLM share at the end",
              "source of the best trial"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        total = r.seed is None
        per = "/ seed"
        cells = [
            f"**{r.method}**" if total else r.method,
            f"all {r.n_seeds}" if total else str(r.seed),
            *(f"{v / r.n_seeds:.1f} {per}" if total else str(v)
              for v in (r.trials, r.llm_turns, r.llm_ran, r.vetoed, r.unusable)),
            f"{_share(r.llm_oom_share)} ({r.llm_oom}/{r.llm_ran})",
            f"{_share(r.cmaes_oom_share)} ({r.cmaes_oom}/{r.cmaes})",
            "-" if r.final_share is None else f"{100 * r.final_share:.1f}%" + (" (mean)" if total else ""),
            ", ".join(f"{k} {v}" if total else k for k, v in sorted(r.best_sources.items())) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
