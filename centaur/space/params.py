"""Search-space model: typed parameters, their Optuna encoding and repair of proposed values.

A parameter of kind ``pow2`` is a set of powers of two. Optimizers see it as an integer exponent
(Optuna name ``log2(NAME)``), so every value they learn from is exactly a value that ran: there is
no snapping after sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from centaur.space.constraints import Constraint
from centaur.study import optuna_private as op

ParamKind = Literal["float", "int", "pow2", "categorical"]
KINDS: tuple[str, ...] = ("float", "int", "pow2", "categorical")


class SpaceError(ValueError):
    """A search space or a configuration is not usable; the message says how to fix it."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: ParamKind
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    source: str = "curated"  # curated | heuristic | config
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpaceError(f"{self.name}: unknown type {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "categorical":
            if not self.choices:
                raise SpaceError(f"{self.name}: a categorical parameter needs a non-empty 'choices' list")
            return
        if self.low is None or self.high is None:
            raise SpaceError(f"{self.name}: a {self.kind} parameter needs 'low' and 'high'")
        if not self.low <= self.high:
            raise SpaceError(f"{self.name}: low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise SpaceError(f"{self.name}: a log-scale parameter needs low > 0 (got {self.low})")
        if self.kind == "pow2":
            for bound in (self.low, self.high):
                if bound < 1 or not _is_pow2(int(bound)) or int(bound) != bound:
                    raise SpaceError(f"{self.name}: pow2 bounds must be powers of two (got {bound})")

    # -- Optuna encoding -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """The Optuna parameter name."""
        return f"log2({self.name})" if self.kind == "pow2" else self.name

    @property
    def distribution(self) -> BaseDistribution:
        if self.kind == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        if self.kind == "pow2":
            return IntDistribution(int(math.log2(self.low)), int(math.log2(self.high)))
        return CategoricalDistribution(list(self.choices))

    def encode(self, value: Any) -> Any:
        """Real value -> Optuna parameter value."""
        return int(math.log2(value)) if self.kind == "pow2" else value

    def decode(self, value: Any) -> Any:
        """Optuna parameter value -> real value that the script runs with."""
        if self.kind == "pow2":
            return 2 ** int(value)
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return value

    @property
    def values(self) -> list[Any] | None:
        """The exact finite set of values, where there is one."""
        if self.kind == "pow2":
            return [2**e for e in range(int(math.log2(self.low)), int(math.log2(self.high)) + 1)]
        if self.kind == "categorical":
            return list(self.choices)
        return None

    # -- checking and repair ---------------------------------------------------------------------
    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind in ("int", "pow2") and (not float(value).is_integer()):
            return False
        if self.kind == "pow2" and not _is_pow2(int(value)):
            return False
        return self.low <= value <= self.high

    def repair(self, value: Any) -> tuple[Any, str | None]:
        """Closest valid value to `value`, and a note of what was changed (None if nothing).

        Integers are rounded (never truncated), powers of two go to the nearest exponent in log
        space, numbers are clipped to the range, categoricals must match a choice (a case-insensitive
        string match is accepted).
        """
        if self.kind == "categorical":
            if value in self.choices:
                return value, None
            for choice in self.choices:
                if str(choice).lower() == str(value).strip().lower():
                    return choice, f"{self.name}: {value!r} read as {choice!r}"
            raise SpaceError(f"{self.name}: {value!r} is not one of {list(self.choices)}")
        number = _as_number(self.name, value)
        note = None if number == value and type(value) is not str else f"{self.name}: {value!r} read as {number}"
        if self.kind == "pow2":
            exponent = round(math.log2(number)) if number > 0 else int(math.log2(self.low))
            repaired: Any = 2**exponent
        elif self.kind == "int":
            repaired = int(round(number))
        else:
            repaired = float(number)
        clipped = min(max(repaired, self.low), self.high)
        repaired = type(repaired)(clipped)
        if repaired != number:
            note = f"{self.name}: {value!r} -> {repaired}"
        return repaired, note

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name}: categorical, one of {list(self.choices)}, default {self.default!r}"
        if self.kind == "pow2":
            return f"{self.name}: power of two, one of {self.values}, default {self.default}"
        scale = ", log scale" if self.log else ""
        return f"{self.name}: {self.kind} in [{_fmt(self.low)}, {_fmt(self.high)}]{scale}, default {_fmt(self.default)}"


@dataclass
class SearchSpace:
    """Ordered parameters plus the script's constants, fixed values and cross-parameter constraints."""

    params: tuple[Param, ...]
    constants: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise SpaceError(f"parameters defined twice: {sorted(duplicates)}")
        for c in self.constraints:
            unknown = c.names - set(names) - set(self.constants) - set(self.fixed)
            if unknown:
                raise SpaceError(
                    f"constraint {c.expression!r} uses unknown names {sorted(unknown)}; "
                    "define them under [constants] in centaur.toml"
                )

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    # -- Optuna ----------------------------------------------------------------------------------
    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.key: p.distribution for p in self.params}

    def encode(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {p.key: p.encode(config[p.name]) for p in self.params}

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {p.name: p.decode(params[p.key]) for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask every parameter of `trial` (in space order) and return the decoded configuration."""
        config = {}
        for p in self.params:
            raw = op.suggest_raw(trial, p.key, p.distribution)  # one call path for every distribution type
            config[p.name] = p.decode(raw)
        return config

    # -- validity --------------------------------------------------------------------------------
    def violations(self, config: Mapping[str, Any]) -> list[str]:
        """Human-readable reasons why `config` cannot run; empty when it can."""
        problems = [f"missing value for {n}" for n in self.names if n not in config]
        problems += [
            f"{p.name}={config[p.name]!r} outside the space ({p.describe()})"
            for p in self.params
            if p.name in config and not p.contains(config[p.name])
        ]
        if problems:
            return problems
        scope = {**self.constants, **self.fixed, **dict(config)}
        return [c.message(scope) for c in self.constraints if not c.holds(scope)]

    def repair(
        self, proposal: Mapping[str, Any], fill_from: Mapping[str, Any] | None = None, fill_source: str = "defaults"
    ) -> tuple[dict[str, Any], list[str]]:
        """Turn a free-form proposal (e.g. from an LLM) into a configuration of this space.

        Returns the configuration and notes on every change: unknown keys dropped, missing keys
        filled from `fill_from` (default: the space defaults, named by `fill_source`), values
        rounded or clipped. Raises SpaceError for an unusable categorical value.
        """
        fill = dict(fill_from) if fill_from is not None else self.defaults()
        notes = [f"unknown key {k!r} dropped" for k in proposal if k not in self]
        config: dict[str, Any] = {}
        for p in self.params:
            if p.name not in proposal or proposal[p.name] is None:
                config[p.name] = fill[p.name]
                notes.append(f"{p.name} missing: {fill[p.name]!r} from {fill_source}")
                continue
            config[p.name], note = p.repair(proposal[p.name])
            if note:
                notes.append(note)
        return config, notes

    def key_of(self, config: Mapping[str, Any]) -> tuple:
        """A hashable identity of a configuration (floats rounded to 10 significant digits)."""
        return tuple(float(f"{config[n]:.10g}") if isinstance(config[n], float) else config[n] for n in self.names)

    def describe(self) -> str:
        lines = [p.describe() for p in self.params]
        lines += [f"constraint: {c.expression}" for c in self.constraints]
        return "\n".join(lines)

    def as_record(self) -> dict[str, Any]:
        """The space as a JSON object, one entry per parameter (and the constraints): what the study keeps
        for people reading the storage (optuna-dashboard shows it as a table, not a run-on paragraph)."""
        record: dict[str, Any] = {p.name: p.describe().split(": ", 1)[1] for p in self.params}
        if self.constraints:
            record["constraints"] = [c.expression for c in self.constraints]
        return record


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpaceError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip().replace("_", ""))
        except ValueError:
            raise SpaceError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SpaceError(f"{name}: expected a finite number, got {value!r}")
    return number


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def space_from_params(params: Sequence[Param], **kwargs: Any) -> SearchSpace:
    return SearchSpace(tuple(params), **kwargs)
