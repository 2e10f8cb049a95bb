"""The value recorded is the value that ran: what a trial wrote, what its process really used (recorded by
centaur.runner.observe), and the verdict.

A trial is
- `verified`: every written value was seen in the running script with the value the study records;
- `unverified`: some could not be seen (a constant nested in a function, a command that does not run
  `{script}`, a run that ended before its module finished); the note says which and why;
- `overridden`: at least one value that ran differs from the one written. The trial is not a result of
  its recorded configuration (TrialStatus.OVERRIDDEN) and the study stops.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.space.extract import ScriptError, module_level_names
from centaur.space.settings_classes import field_names, find_settings_fields

SPEC_FILE = "verify.json"
VERIFIED, UNVERIFIED, OVERRIDDEN = "verified", "unverified", "overridden"


@dataclass(frozen=True)
class Verdict:
    state: str  # VERIFIED | UNVERIFIED | OVERRIDDEN
    note: str = ""  # unverified: which names and why; overridden: each value written, the value run, what set it


@dataclass
class VerificationPlan:
    """What a trial checks: `spec` goes to the trial process; `unverifiable` are names that cannot be seen
    there, with the reason."""

    spec: dict[str, Any] = field(default_factory=dict)
    unverifiable: dict[str, str] = field(default_factory=dict)

    @property
    def observes(self) -> bool:
        return any(self.spec.get(k) for k in ("globals", "arguments", "config_copy", "instances"))

    def write(self, trial_dir: Path) -> Path:
        for old in trial_dir.glob("observed-*.json"):
            old.unlink()  # a record of an earlier run in this folder must not count
        path = trial_dir / SPEC_FILE
        path.write_text(json.dumps(self.spec, indent=1, default=str), encoding="utf-8")
        return path


def plan_for_script(source: str, filename: str, values: Mapping[str, Any]) -> VerificationPlan:
    """Values written into the work copy (ALL_CAPS constants, lowercase globals): the module-level ones
    are read from the module when it finishes; the others cannot be seen."""
    try:
        top = module_level_names(source, filename)
    except ScriptError:
        top = set()
    plan = VerificationPlan()
    plan.spec["globals"] = {n: v for n, v in values.items() if n in top}
    for name in values:
        if name not in top:
            plan.unverifiable[name] = "assigned inside a function or class, where its value cannot be seen"
    return plan


def plan_for_fields(source: str, filename: str, values: Mapping[str, Any]) -> VerificationPlan:
    """Values written into settings-class defaults (the `dataclass` source): checked on every instance
    of the class the script made; other written names (fixed ALL_CAPS ones) as module globals."""
    fields = field_names(find_settings_fields(source, filename))
    plan = plan_for_script(source, filename, {n: v for n, v in values.items() if n not in fields})
    instances: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    for name, value in values.items():
        if name in fields:
            f = fields[name]
            instances.setdefault(f.cls, {})[f.assignment.name] = value
            kinds[f.cls] = f.kind
    plan.spec.update(instances=instances, instance_kinds=kinds)
    return plan


def same_value(written: Any, ran: Any) -> bool:
    if isinstance(written, bool) or isinstance(ran, bool):
        return written is ran or (type(written) is type(ran) and written == ran)
    if isinstance(written, (int, float)) and isinstance(ran, (int, float)):
        return math.isclose(float(written), float(ran), rel_tol=1e-12, abs_tol=0.0) or written == ran
    return written == ran


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "repr" in value:
        return str(value["repr"])
    return repr(value)


def read_observations(trial_dir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(trial_dir.glob("observed-*.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def judge(plan: VerificationPlan, observations: Sequence[Mapping[str, Any]], *,
          setters: Mapping[str, str] | None = None, reason_unseen: str = "") -> Verdict:  # fmt: skip
    """The verdict on one trial from what its processes recorded. `setters`: for a name, what is known to
    assign it besides the work copy (a config file, an argument), named in the message; `reason_unseen`:
    why no process may have recorded anything."""
    setters = dict(setters or {})
    spec = plan.spec
    unseen = dict(plan.unverifiable)
    if not plan.observes:
        if not unseen:
            return Verdict(VERIFIED, "nothing was written")
        return Verdict(UNVERIFIED, _unseen_note(unseen))
    if not observations:
        why = reason_unseen or "the run left no record of its values (it ended before its module finished)"
        names = [*spec.get("globals", {}), *spec.get("arguments", {}), *[f"{c}.*" for c in spec.get("instances", {})]]
        if spec.get("config_copy"):
            names.append(Path(spec["config_copy"]).name)
        return Verdict(UNVERIFIED, _unseen_note({**unseen, **{n: why for n in names}}))
    wrong: dict[str, str] = {}
    for obs in observations:
        for name, written in spec.get("globals", {}).items():
            ran = obs.get("globals", {}).get(name)
            if isinstance(ran, dict) and ran.get("missing"):
                unseen[name] = "not a module global when the script finished"
            elif not same_value(written, ran):
                wrong[name] = f"{name}: wrote {written!r}, ran {_shown(ran)}" + _by(setters.get(name))
        for dest, written in spec.get("arguments", {}).items():
            seen = obs.get("arguments", {}).get(dest)
            if seen is None:
                unseen[dest] = "no argparse namespace held it (the script did not parse its arguments here)"
            elif not same_value(written, seen["parsed"]):
                wrong[dest] = (f"{dest}: passed {written!r}, parsed {_shown(seen['parsed'])}"
                               + _by(setters.get(dest) or "a later argument on the command line"))  # fmt: skip
            elif not same_value(written, seen["end"]):
                wrong[dest] = f"{dest}: passed {written!r}, changed to {_shown(seen['end'])} after parse_args"
        if spec.get("config_copy"):
            opened = obs.get("opened", {})
            copy_name = Path(spec["config_copy"]).name
            if opened.get("original"):
                wrong[copy_name] = (f"the script opened the original {spec['config_original']} instead of (or "
                                    "besides) the trial's copy, so its values may not be the trial's")  # fmt: skip
            elif not opened.get("copy"):
                unseen[copy_name] = "the script's process never opened the trial's copy (a subprocess may have)"
        for class_name, fields in spec.get("instances", {}).items():
            objects = obs.get("instances", {}).get(class_name, [])
            if not objects:
                why = f"the script made no instance of {class_name} that centaur could see"
                unseen.update({f"{class_name}.{f}": why for f in fields})
            for obj in objects:
                for name, written in fields.items():
                    ran = obj.get(name)
                    if not same_value(written, ran):
                        wrong[name] = f"{name}: wrote {written!r}, ran {_shown(ran)}" + _by(setters.get(name))
    if wrong:
        return Verdict(OVERRIDDEN, "; ".join(wrong.values()))
    if unseen:
        return Verdict(UNVERIFIED, _unseen_note(unseen))
    return Verdict(VERIFIED)


def _by(setter: str | None) -> str:
    return f" (set by {setter})" if setter else ""


def _unseen_note(unseen: Mapping[str, str]) -> str:
    by_reason: dict[str, list[str]] = {}
    for name, reason in unseen.items():
        by_reason.setdefault(reason, []).append(name)
    return "; ".join(f"{', '.join(sorted(names))}: {reason}" for reason, names in by_reason.items())


OVERRIDDEN_FIX = (
    "something the script runs after centaur's values replaces them; remove these names from what sets "
    "them (the config file or argument named), or exclude them from the search ([space] exclude in centaur.toml)"
)
