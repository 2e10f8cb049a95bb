"""The failure summary the LLM methods show: rules in the parameters' own units, one condition per
parameter even when the tree splits it twice."""

from __future__ import annotations

import random
from collections.abc import Callable

from centaur.methods.centaur.failure_regions import failure_summary
from centaur.space import Param, SearchSpace

SPACE = SearchSpace((
    Param("DEPTH", "int", 8, low=4, high=24),
    Param("DEVICE_BATCH_SIZE", "pow2", 128, low=32, high=256),
    Param("LR", "float", 0.01, low=1e-3, high=0.1, log=True),
    Param("PATTERN", "categorical", "SSSL", choices=("SSSL", "LLLL", "SSSS")),
))  # fmt: skip


def _trials(oom: Callable[[dict], bool], n: int = 200) -> tuple[list[dict], list[str]]:
    rng = random.Random(0)
    configs = [{"DEPTH": rng.randint(4, 24), "DEVICE_BATCH_SIZE": rng.choice([32, 64, 128, 256]),
                "LR": 10 ** rng.uniform(-3, -1), "PATTERN": rng.choice(SPACE["PATTERN"].choices)}
               for _ in range(n)]  # fmt: skip
    return configs, ["oom" if oom(c) else "ok" for c in configs]


def test_rules_name_the_failing_region_in_own_units() -> None:
    configs, statuses = _trials(lambda c: c["DEPTH"] >= 16 and c["DEVICE_BATCH_SIZE"] >= 128)
    text = failure_summary(SPACE, configs, statuses)
    n_oom = statuses.count("oom")
    assert text.splitlines()[0] == f"{n_oom} of 200 finished trials ran out of memory."
    rule = text.splitlines()[2]
    assert rule.startswith("- ") and "DEPTH >= 16" in rule and "DEVICE_BATCH_SIZE >= 128" in rule, text
    assert f"{n_oom} of {n_oom} ran out of memory" in rule  # the region holds every failure and nothing else


def test_a_parameter_split_twice_reads_as_one_condition() -> None:
    configs, statuses = _trials(lambda c: c["DEVICE_BATCH_SIZE"] == 128 and c["DEPTH"] >= 12)
    text = failure_summary(SPACE, configs, statuses)
    rules = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert rules and all(ln.count("DEVICE_BATCH_SIZE") <= 1 for ln in rules), text
    assert "DEVICE_BATCH_SIZE = 128" in rules[0] and "DEPTH >= 12" in rules[0], text


def test_categorical_and_float_rules() -> None:
    configs, statuses = _trials(lambda c: c["PATTERN"] == "LLLL" and c["LR"] > 0.03)
    rule = failure_summary(SPACE, configs, statuses).splitlines()[2]
    assert "PATTERN = LLLL" in rule and "LR > 0.0" in rule, rule


def test_few_trials_give_only_the_count() -> None:
    configs, statuses = _trials(lambda c: c["DEPTH"] >= 20, n=10)
    expected = f"{statuses.count('oom')} of 10 finished trials ran out of memory."
    assert failure_summary(SPACE, configs, statuses) == expected
    assert failure_summary(SPACE, configs, ["ok"] * 10) == "No trial ran out of memory so far (10 finished)."
