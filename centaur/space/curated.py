"""Curated metadata for the 14 hyperparameters of Karpathy's autoresearch train.py
(reference-study section 3.2), the names that are task constants, and heuristics for unknown names."""

from __future__ import annotations

from typing import Any

from centaur.space.params import Param

WINDOW_PATTERNS = ("SSSL", "SSLL", "SLSL", "LLLL", "SSSS", "LSSL")

# name -> (kind, low, high, log, choices, help)
AUTORESEARCH: dict[str, dict[str, Any]] = {
    "DEPTH": dict(kind="int", low=4, high=24, help="number of transformer layers"),
    "ASPECT_RATIO": dict(kind="int", low=32, high=128, help="model width = DEPTH x ASPECT_RATIO, rounded to heads"),
    "HEAD_DIM": dict(kind="pow2", low=64, high=256, help="attention head dimension"),
    "DEVICE_BATCH_SIZE": dict(kind="pow2", low=32, high=256, help="sequences per micro-batch"),
    "TOTAL_BATCH_SIZE": dict(kind="pow2", low=2**16, high=2**21, help="tokens per optimizer step"),
    "EMBEDDING_LR": dict(kind="float", low=0.01, high=2.0, log=True, help="AdamW LR of the embeddings"),
    "UNEMBEDDING_LR": dict(kind="float", low=5e-4, high=0.05, log=True, help="AdamW LR of the output head"),
    "MATRIX_LR": dict(kind="float", low=0.005, high=0.2, log=True, help="Muon LR of the block matrices"),
    "SCALAR_LR": dict(kind="float", low=0.05, high=2.0, log=True, help="AdamW LR of the per-layer scalars"),
    "WEIGHT_DECAY": dict(kind="float", low=0.0, high=0.5, help="weight decay of the matrices"),
    "WARMUP_RATIO": dict(kind="float", low=0.0, high=0.3, help="share of the time budget spent warming up"),
    "WARMDOWN_RATIO": dict(kind="float", low=0.1, high=0.8, help="share of the time budget spent decaying"),
    "FINAL_LR_FRAC": dict(kind="float", low=0.0, high=0.2, help="LR at the end as a fraction of the peak"),
    "WINDOW_PATTERN": dict(kind="categorical", choices=WINDOW_PATTERNS, help="S/L attention windows per layer"),
}

# Karpathy's starting configuration (trial 0 of every method in the study).
AUTORESEARCH_DEFAULTS: dict[str, Any] = {
    "DEPTH": 8,
    "ASPECT_RATIO": 64,
    "HEAD_DIM": 128,
    "DEVICE_BATCH_SIZE": 128,
    "TOTAL_BATCH_SIZE": 2**19,
    "EMBEDDING_LR": 0.6,
    "UNEMBEDDING_LR": 0.004,
    "MATRIX_LR": 0.04,
    "SCALAR_LR": 0.5,
    "WEIGHT_DECAY": 0.2,
    "WARMUP_RATIO": 0.0,
    "WARMDOWN_RATIO": 0.5,
    "FINAL_LR_FRAC": 0.0,
    "WINDOW_PATTERN": "SSSL",
}

# Names that are properties of the task, never hyperparameters.
TASK_CONSTANTS = frozenset(
    {
        "MAX_SEQ_LEN",
        "TIME_BUDGET",
        "EVAL_TOKENS",
        "EVAL_BYTES",
        "VOCAB_SIZE",
        "MAX_SHARD",
        "VAL_SHARD",
        "H100_BF16_PEAK_FLOPS",
        "SEED",
    }
)

# TOTAL_BATCH_SIZE must split into whole micro-batches of DEVICE_BATCH_SIZE sequences.
BATCH_CONSTRAINT = "TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0"
AUTORESEARCH_SEQ_LEN = 2048


def curated_param(name: str, default: Any) -> Param | None:
    meta = AUTORESEARCH.get(name)
    if meta is None:
        return None
    meta = dict(meta)
    if "choices" in meta:
        meta["choices"] = tuple(meta["choices"])
    return Param(name=name, default=default, source="curated", **meta)


def heuristic_param(name: str, default: Any) -> Param | None:
    """A guess for a name the table does not know; None when the value is not tunable."""
    if isinstance(default, bool):
        return Param(name, "categorical", default, choices=(True, False), source="heuristic")
    if isinstance(default, str):
        # A single-choice categorical would only pin the value: skip until the user lists choices.
        return None
    if isinstance(default, int):
        if default > 0 and default & (default - 1) == 0 and default >= 2:
            return Param(name, "pow2", default, low=max(1, default // 4), high=default * 4, source="heuristic")
        if default <= 0:
            return None
        return Param(name, "int", default, low=max(1, default // 4), high=max(default * 4, 2), source="heuristic")
    if isinstance(default, float):
        if 0 < default < 0.01:
            return Param(name, "float", default, low=default / 100, high=default * 100, log=True, source="heuristic")
        if default > 0:
            return Param(name, "float", default, low=default / 10, high=default * 10, log=True, source="heuristic")
        if default == 0.0:
            return Param(name, "float", default, low=0.0, high=1.0, source="heuristic")
    return None
