"""Loading the reference study's released trials (`paper_trials_seeds01.json`) into a flat table."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The 14 hyperparameters of the reference study (section 3.2), in the table's order.
HP_NAMES: tuple[str, ...] = (
    "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE",
    "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY",
    "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "WINDOW_PATTERN",
)
NUMERIC_HPS: tuple[str, ...] = HP_NAMES[:-1]
INT_HPS: tuple[str, ...] = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE")
WINDOW_PATTERNS: tuple[str, ...] = ("SSSL", "SSLL", "SLSL", "LLLL", "SSSS", "LSSL")

DEFAULT_CONFIG: dict[str, Any] = {
    "DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "DEVICE_BATCH_SIZE": 128, "TOTAL_BATCH_SIZE": 2**19,
    "EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2,
    "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0, "WINDOW_PATTERN": "SSSL",
}

CODE_METHOD = "Karpathy Agent (Code)"
# The study stores 100.0 (or null) for a failure; LLAMBO-Paper also wrote its penalty (max + 0.5) there.
FAILED_SENTINEL = 100.0

COLUMNS: tuple[str, ...] = ("method", "seed", "tid", *HP_NAMES, "val_bpb", "success", "wt")


class TrialsFormatError(ValueError):
    """The trials file is not in the `{method: {seed: [trial, ...]}}` format."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_trials(path: str | Path) -> pd.DataFrame:
    """Read the trials file into one row per trial.

    Columns: method, seed (int), tid, the 14 HPs, val_bpb (NaN for every failed trial, whatever the
    file stores), success (bool), wt (seconds counted against the 24 h budget).
    TOTAL_BATCH_SIZE is NaN for most "Karpathy Agent (Code)" trials: that agent's logger drops the
    `2**19` power expression (reference-study section 2.8); callers decide how to impute it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trials file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrialsFormatError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise TrialsFormatError(f"{path}: expected a non-empty object {{method: {{seed: [trial, ...]}}}}")
    rows: list[dict[str, Any]] = []
    for method, seeds in raw.items():
        if not isinstance(seeds, dict):
            raise TrialsFormatError(f"{path}: method {method!r} must map seeds to trial lists")
        for seed, trials in seeds.items():
            if not isinstance(trials, list):
                raise TrialsFormatError(f"{path}: {method!r} seed {seed!r} must be a list of trials")
            for t in trials:
                if not isinstance(t, dict) or "success" not in t or "wt" not in t:
                    raise TrialsFormatError(f"{path}: {method!r} seed {seed!r}: trial without success/wt")
                missing = [h for h in HP_NAMES if h not in t and h != "TOTAL_BATCH_SIZE"]
                if missing:
                    raise TrialsFormatError(f"{path}: {method!r} seed {seed!r} tid {t.get('tid')}: "
                                            f"missing {missing}")
                rows.append(_row(method, seed, t))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["seed"] = df["seed"].astype(int)
    df["tid"] = df["tid"].astype(int)
    df["success"] = df["success"].astype(bool)
    for h in NUMERIC_HPS:
        df[h] = df[h].astype(float)
    df["val_bpb"] = df["val_bpb"].astype(float)
    df["wt"] = df["wt"].astype(float)
    # provenance travels with the frame so a fitted model can record which data it saw
    df.attrs["path"] = str(path)
    df.attrs["sha256"] = file_sha256(path)
    return df


def _row(method: str, seed: str, t: dict[str, Any]) -> dict[str, Any]:
    success = bool(t["success"])
    v = t.get("val_bpb")
    val = float(v) if (success and v is not None and float(v) < FAILED_SENTINEL) else math.nan
    row: dict[str, Any] = {"method": method, "seed": seed, "tid": t.get("tid", -1)}
    for h in HP_NAMES:
        row[h] = t.get(h, np.nan if h != "WINDOW_PATTERN" else None)
        if row[h] is None and h != "WINDOW_PATTERN":
            row[h] = np.nan
    row.update(val_bpb=val, success=success and not math.isnan(val), wt=float(t["wt"]))
    return row


def impute_code_batch(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the missing TOTAL_BATCH_SIZE with the source default 2**19 (the value the code agent's
    file starts from; the logs cannot tell us whether it edited that line)."""
    out = df.copy()
    out["TOTAL_BATCH_SIZE"] = out["TOTAL_BATCH_SIZE"].fillna(float(DEFAULT_CONFIG["TOTAL_BATCH_SIZE"]))
    return out
