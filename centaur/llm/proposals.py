"""From a model's JSON to a configuration of the space: schema for constrained decoding, validation, repair."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from centaur.space import Param, SearchSpace, SpaceError


class ProposalError(ValueError):
    """A proposal cannot be turned into a runnable configuration; the message is fit to show the model."""


@dataclass
class Proposal:
    config: dict[str, Any]
    repairs: list[str] = field(default_factory=list)


def param_schema(p: Param) -> dict[str, Any]:
    if p.kind == "categorical":
        return {"enum": list(p.choices)}
    if p.kind == "pow2":
        return {"type": "integer", "enum": p.values}
    kind = "integer" if p.kind == "int" else "number"
    return {"type": kind, "minimum": p.low if p.kind == "float" else int(p.low),
            "maximum": p.high if p.kind == "float" else int(p.high)}


def config_schema(space: SearchSpace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """JSON schema of one configuration (all of `names`, default every parameter): one property per
    parameter with its type, enum or bounds. Used for constrained decoding and to validate answers."""
    chosen = list(names) if names is not None else space.names
    return {
        "type": "object",
        "properties": {n: param_schema(space[n]) for n in chosen},
        "required": chosen,
        "additionalProperties": False,
    }


def validate_proposal(
    space: SearchSpace,
    raw: Any,
    fill_from: Mapping[str, Any] | None = None,
    fill_source: str = "defaults",
    names: Iterable[str] | None = None,
) -> Proposal:
    """Check and repair an LLM proposal with `SearchSpace.repair` (ints rounded, powers of two to the
    nearest power, numbers clipped, categoricals matched), then the space's constraints.

    Returns the configuration and a note per repair (jsonschema's view of what was wrong comes
    first, so the log says what the model got wrong before what we did about it). `names`
    restricts the parameters the model was asked for; the others come from `fill_from` silently.
    Raises ProposalError for an unusable answer (not an object, a categorical matching no choice,
    a violated constraint).
    """
    if not isinstance(raw, Mapping):
        raise ProposalError(f"expected a JSON object of parameter values, got {type(raw).__name__}")
    raw = _unwrap(space, dict(raw))
    raw = _match_names(space, raw)
    asked = list(names) if names is not None else space.names
    notes = [_schema_note(e) for e in _schema_errors(space, asked, raw)]
    base = dict(fill_from) if fill_from is not None else space.defaults()
    proposal = {k: v for k, v in raw.items() if k in asked or k not in space}
    try:
        config, repairs = space.repair(proposal, fill_from=base, fill_source=fill_source)
    except SpaceError as e:
        raise ProposalError(str(e)) from None
    notes += [r for r in repairs if not _is_silent_fill(r, asked, space)]
    problems = space.violations(config)
    if problems:
        raise ProposalError("; ".join(problems))
    return Proposal(config=config, repairs=notes)


def _schema_errors(space: SearchSpace, names: list[str], raw: dict[str, Any]) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft202012Validator(config_schema(space, names))
    return sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))


def _schema_note(e: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in e.absolute_path) or "answer"
    return f"schema: {where}: {e.message}"


def _is_silent_fill(note: str, asked: list[str], space: SearchSpace) -> bool:
    name = note.split(" ", 1)[0]
    return note.startswith(f"{name} missing:") and name in space and name not in asked


def _unwrap(space: SearchSpace, raw: dict[str, Any]) -> dict[str, Any]:
    """Models often wrap the answer: {"config": {...}} or {"configuration": {...}}."""
    if not any(k in space for k in raw) and len(raw) == 1:
        inner = next(iter(raw.values()))
        if isinstance(inner, Mapping):
            return dict(inner)
    return raw


def _match_names(space: SearchSpace, raw: dict[str, Any]) -> dict[str, Any]:
    """Accept parameter names in another case ("lr" for "LR"); exact names win."""
    lower = {n.lower(): n for n in space.names}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key if key in space else lower.get(str(key).strip().lower(), key)
        if name not in out or key == name:
            out[name] = value
    return out
