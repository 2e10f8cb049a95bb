"""Which trials of a Centaur study are LLM turns.

The reference used `trial % round(1/ratio) == 0`, so a ratio of 0.3 gave every third trial (1/3).
Here the share is exact: after the warm-up, trial n is an LLM turn when floor((k+1)·r) > floor(k·r)
with k = n - warmup, so any run of m trials after the warm-up holds floor(m·r) or ceil(m·r) LLM
turns, spread evenly. It depends only on the trial number, so resumes and parallel workers agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction


class LLMSchedule:
    def __init__(self, ratio: float = 0.3, warmup: int = 10, trials: Iterable[int] | None = None) -> None:
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"llm_ratio must be in [0, 1], got {ratio}")
        if int(warmup) < 0:
            raise ValueError(f"llm_warmup must be >= 0, got {warmup}")
        self.ratio = Fraction(str(ratio)).limit_denominator(10_000)
        self.warmup = int(warmup)
        self.trials = frozenset(int(t) for t in trials) if trials is not None else None

    def is_llm_turn(self, number: int) -> bool:
        if self.trials is not None:  # an explicit list, for ablations
            return number in self.trials
        k = number - self.warmup
        if k < 0:
            return False
        return (self.ratio * (k + 1)).__floor__() > (self.ratio * k).__floor__()

    def describe(self) -> str:
        if self.trials is not None:
            return f"LLM on trials {sorted(self.trials)}"
        return f"LLM on {float(self.ratio):.0%} of trials after the first {self.warmup}"
