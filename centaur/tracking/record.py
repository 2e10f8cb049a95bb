"""What a tracker logs of one finished trial, in the units the script uses and under names every tracker
accepts."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from centaur.study.records import cost_of, is_success, status_of
from centaur.study.schema import AGENT_DECISION_ATTR, CONFIG_ATTR, SOURCE_ATTR, VERIFIED_ATTR, WALL_ATTR

_INVALID = re.compile(r"[^A-Za-z0-9_\-. /]")


def safe_name(name: str) -> str:
    """`name` with what MLflow refuses in a key (anything but letters, digits, `_-. /`) replaced by `_`."""
    return _INVALID.sub("_", name) or "_"


@dataclass(frozen=True)
class TrialPayload:
    number: int
    params: dict[str, Any]  # the configuration that ran, in the script's units (HEAD_DIM 128, not log2 7)
    metrics: dict[str, float]  # the script's metric lines, the objective value of a success, cost and wall seconds
    status: str  # ok or the failure class
    tags: dict[str, str] = field(default_factory=dict)  # proposal source, verification, error
    log: Path | None = None  # the trial's log, logged as an artifact

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def payload(trial: FrozenTrial) -> TrialPayload:
    attrs = trial.user_attrs
    config = attrs.get(CONFIG_ATTR) or trial.params
    params = {safe_name(str(k)): v for k, v in dict(config).items()}
    metrics = {safe_name(str(k)): float(v) for k, v in dict(attrs.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and math.isfinite(v)}  # fmt: skip
    metrics["cost_s"] = float(cost_of(trial))
    metrics["wall_s"] = float(attrs.get(WALL_ATTR, 0.0))
    if is_success(trial) and trial.value is not None:
        metrics["objective"] = float(trial.value)
    status = status_of(trial)
    tags = {"status": status, "source": str(attrs.get(SOURCE_ATTR, ""))}
    if VERIFIED_ATTR in attrs:
        tags["verified"] = str(attrs[VERIFIED_ATTR])
    if AGENT_DECISION_ATTR in attrs:  # agent-code: what became of the edit (kept, reverted, rejected, ...)
        tags["decision"] = str(attrs[AGENT_DECISION_ATTR])
    if attrs.get("error"):
        tags["error"] = str(attrs["error"])[:500]
    log = Path(attrs["log"]) if isinstance(attrs.get("log"), str) and Path(attrs["log"]).is_file() else None
    return TrialPayload(trial.number, params, metrics, status, tags, log)
