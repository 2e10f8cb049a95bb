"""What defines a study, recorded when it is created and checked on every resume or join.

A study is days of measurements: resuming it with another script, another search space or another
method setting would mix results that cannot be compared, so any difference is refused with a message
that says what differs and how to start a new study instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from centaur.space import SearchSpace
from centaur.study.schema import IDENTITY_ATTR  # noqa: F401  (the attribute this module's dict is stored in)
from centaur.tasks.base import Task


def space_fingerprint(space: SearchSpace) -> str:
    """A hash of what the optimizer searches: names, types, ranges, choices, fixed values, constraints.
    Defaults are left out: they only choose the baseline trial."""
    params = [
        {
            "name": p.name,
            "kind": p.kind,
            "low": p.low,
            "high": p.high,
            "log": bool(p.log),
            "values": list(p.values) if p.kind in ("pow2", "categorical") else None,
        }
        for p in space
    ]
    body = {
        "params": params,
        "fixed": {k: space.fixed[k] for k in sorted(space.fixed)},
        "constraints": [c.expression for c in space.constraints],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def task_fingerprint(task: Task) -> str | None:
    """A hash of what is run: the script's source (with its `[space] config` file and `[runner] command`,
    when it has them: a changed file or launch command changes the results as a changed script does), or
    the data a surrogate was fitted on."""
    script = getattr(task, "script", None)
    if script is not None:
        digest = hashlib.sha256(Path(script).read_bytes())
        defining = getattr(task, "defining_inputs", None)
        for part in defining() if callable(defining) else []:
            digest.update(b"\0" + part)  # nothing added for a plain script: its studies keep their hash
        return digest.hexdigest()[:16]
    model = getattr(task, "model", None)
    data = getattr(model, "meta", {}).get("data_sha256") if model is not None else None
    return str(data)[:16] if data else None


@dataclass
class StudyIdentity:
    task: str  # Task.name
    script: str | None  # absolute path where the study was started (informative: machines differ)
    task_hash: str | None
    space_hash: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    penalty: float = 100.0

    @classmethod
    def of(cls, task: Task, *, method: str, options: dict[str, Any], seed: int, penalty: float) -> StudyIdentity:
        script = getattr(task, "script", None)
        return cls(
            task=task.name,
            script=str(script) if script is not None else None,
            task_hash=task_fingerprint(task),
            space_hash=space_fingerprint(task.space),
            method=method,
            options=_plain(options),
            seed=int(seed),
            penalty=float(penalty),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "script": self.script,
            "task_hash": self.task_hash,
            "space_hash": self.space_hash,
            "method": self.method,
            "options": self.options,
            "seed": self.seed,
            "penalty": self.penalty,
        }

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """What differs from a stored identity, as phrases; empty when this run may resume it."""
        diffs = []
        if stored.get("task_hash") != self.task_hash:
            where = f" ({stored.get('script')})" if stored.get("script") else ""
            diffs.append(f"the script differs from the one the study was started with{where} (or its [space] "
                         "config file or its [runner] command does)")  # fmt: skip
        if stored.get("space_hash") != self.space_hash:
            diffs.append("the search space differs (names, types, ranges, choices, fixed values or constraints)")
        for key in ("method", "seed", "penalty"):
            if stored.get(key) != getattr(self, key):
                diffs.append(f"{key} is {getattr(self, key)!r}, the study's is {stored.get(key)!r}")
        if stored.get("options", {}) != self.options:
            diffs.append(f"method options are {self.options}, the study's are {stored.get('options', {})}")
        return diffs


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """Options as they read back from the storage (JSON), so a resume compares like with like."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        return v

    return json.loads(json.dumps({k: clean(v) for k, v in sorted(options.items())}, default=repr))
