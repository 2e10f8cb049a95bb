"""Physically meaningful features of the reference GPT (Karpathy's autoresearch train.py) from its 14 HPs.

Everything is vectorised over numpy arrays so that one evaluation stays in the tens of microseconds.
Model facts (reference-study section 9): model_dim = ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM,
n_head = model_dim / HEAD_DIM, vocab 8192, sequence length 2048, ReLU^2 MLP with 4x expansion, value
embeddings on alternating layers (always including the last), untied lm_head, windows S = 1024 and
L = 2048 with the last layer always L.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from centaur.surrogate.data import DEFAULT_CONFIG, HP_NAMES, NUMERIC_HPS, WINDOW_PATTERNS

# Bump whenever a feature's definition changes: saved models refuse to load across versions.
FEATURE_VERSION = 1

VOCAB = 8192
SEQ_LEN = 2048
SHORT_WINDOW = 1024
LONG_WINDOW = 2048
TIME_BUDGET_S = 300.0
VE_GATE_CHANNELS = 32
MAX_DEPTH = 64

# Reference point on an H100 (section 9.7): the defaults train ~953 steps / 499.6M tokens in 300 s.
REF_TOKENS_300S = 499.6e6

# Memory model (bytes) of one micro-batch, fitted on the OOM boundary of the data (see docs/surrogate.md):
# peak ~= ACT_BYTES * B*T*d*L + LOGIT_BYTES * B*T*V + STATE_BYTES * params.
# The constants reproduce ~45 GB at the defaults (section 9.7) and put the data's OOM boundary near 76 GB.
ACT_BYTES = 36.2
LOGIT_BYTES = 1.81
STATE_BYTES = 14.7  # weights, grads and optimizer state per parameter (fitted, ~16 expected)
MEMORY_CAP_GB = 76.0


def _window_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per (pattern, depth): sum of the attention windows over layers and the number of long layers."""
    win = np.zeros((len(WINDOW_PATTERNS), MAX_DEPTH + 1))
    n_long = np.zeros_like(win)
    for p, pat in enumerate(WINDOW_PATTERNS):
        for depth in range(1, MAX_DEPTH + 1):
            chars = [pat[i % len(pat)] for i in range(depth)]
            chars[-1] = "L"  # the last layer always attends over the full context
            win[p, depth] = sum(LONG_WINDOW if c == "L" else SHORT_WINDOW for c in chars)
            n_long[p, depth] = chars.count("L")
    return win, n_long


_WIN_SUM, _N_LONG = _window_tables()
_PATTERN_INDEX = {p: i for i, p in enumerate(WINDOW_PATTERNS)}


def snap_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The reference runner's post-processing (section 3.3): round the power-of-2 HPs to the nearest
    power of 2 (ties down), round ints, raise TOTAL_BATCH_SIZE to at least one micro-batch, clip to the
    space bounds. Unknown keys are dropped; missing ones take the default."""
    out: dict[str, Any] = {}
    for name in HP_NAMES:
        v = config.get(name, DEFAULT_CONFIG[name])
        if name == "WINDOW_PATTERN":
            v = str(v).upper()
            out[name] = v if v in _PATTERN_INDEX else DEFAULT_CONFIG[name]
            continue
        v = float(v)
        lo, hi = _BOUNDS[name]
        if name in _POW2:
            out[name] = _nearest_pow2(min(max(v, lo), hi))
        elif name in ("DEPTH", "ASPECT_RATIO"):
            out[name] = int(round(min(max(v, lo), hi)))
        else:
            out[name] = float(min(max(v, lo), hi))
    out["TOTAL_BATCH_SIZE"] = max(out["TOTAL_BATCH_SIZE"], out["DEVICE_BATCH_SIZE"] * SEQ_LEN)
    return out


_POW2 = ("HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE")
_BOUNDS: dict[str, tuple[float, float]] = {
    "DEPTH": (4, 24), "ASPECT_RATIO": (32, 128), "HEAD_DIM": (64, 256), "DEVICE_BATCH_SIZE": (32, 256),
    "TOTAL_BATCH_SIZE": (2**16, 2**21), "EMBEDDING_LR": (0.01, 2.0), "UNEMBEDDING_LR": (5e-4, 0.05),
    "MATRIX_LR": (0.005, 0.2), "SCALAR_LR": (0.05, 2.0), "WEIGHT_DECAY": (0.0, 0.5),
    "WARMUP_RATIO": (0.0, 0.3), "WARMDOWN_RATIO": (0.1, 0.8), "FINAL_LR_FRAC": (0.0, 0.2),
}
LOG_HPS = ("HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE", "EMBEDDING_LR", "UNEMBEDDING_LR",
           "MATRIX_LR", "SCALAR_LR")


def hp_bounds() -> dict[str, tuple[float, float]]:
    return dict(_BOUNDS)


def _nearest_pow2(v: float) -> int:
    lo = 2 ** math.floor(math.log2(v))
    hi = lo * 2
    return int(lo if v - lo <= hi - v else hi)  # ties go down, as in the reference


def _derived(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    depth = c["DEPTH"]
    hd = c["HEAD_DIM"]
    d = np.ceil(depth * c["ASPECT_RATIO"] / hd) * hd
    n_head = d / hd
    n_ve = np.ceil(depth / 2)
    blocks = 12.0 * d * d * depth  # q, k, v, o (4 d^2) + MLP 4x up and down (8 d^2)
    emb = VOCAB * d
    ve = n_ve * VOCAB * d
    gates = n_ve * VE_GATE_CHANNELS * n_head
    params = blocks + 2 * emb + ve + gates + 2 * depth
    pidx = c["PATTERN_IDX"].astype(int)
    didx = np.clip(depth.astype(int), 1, MAX_DEPTH)
    win_sum = _WIN_SUM[pidx, didx]
    # nanochat's estimate: 6 N (matmul params incl. lm_head) + 12 * d * window per layer for attention
    flops_tok = 6.0 * (blocks + emb) + 12.0 * d * win_sum
    return dict(d=d, n_head=n_head, blocks=blocks, emb=emb, ve=ve, params=params, win_sum=win_sum,
                n_long=_N_LONG[pidx, didx], flops_tok=flops_tok)


def _ref_flops() -> float:
    cols = config_columns([DEFAULT_CONFIG])
    return float(_derived(cols)["flops_tok"][0])


def config_columns(configs: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Column arrays of a list of configs (WINDOW_PATTERN becomes PATTERN_IDX)."""
    cols = {h: np.array([float(cfg[h]) for cfg in configs]) for h in NUMERIC_HPS}
    cols["PATTERN_IDX"] = np.array([_PATTERN_INDEX.get(str(cfg["WINDOW_PATTERN"]), 0) for cfg in configs])
    return cols


def frame_columns(df: Any) -> dict[str, np.ndarray]:
    """Column arrays of a trials DataFrame."""
    cols = {h: df[h].to_numpy(dtype=float) for h in NUMERIC_HPS}
    cols["PATTERN_IDX"] = df["WINDOW_PATTERN"].map(_PATTERN_INDEX).fillna(0).to_numpy(dtype=int)
    return cols


_REF_FLOPS: float | None = None


def physical(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Derived quantities in physical units (params, FLOPs, tokens, steps, memory)."""
    global _REF_FLOPS
    if _REF_FLOPS is None:
        _REF_FLOPS = _ref_flops()
    x = _derived(c)
    b, tbs = c["DEVICE_BATCH_SIZE"], c["TOTAL_BATCH_SIZE"]
    # Throughput at constant achieved FLOP/s, calibrated so the defaults give 499.6M tokens (H100);
    # the data are H200 runs, which only rescales this constant (irrelevant to tree models).
    tokens = REF_TOKENS_300S * _REF_FLOPS / x["flops_tok"]
    act = b * SEQ_LEN * x["d"] * c["DEPTH"]
    logits = b * SEQ_LEN * VOCAB
    mem_gb = (ACT_BYTES * act + LOGIT_BYTES * logits + STATE_BYTES * x["params"]) / 1e9
    return dict(
        model_dim=x["d"], n_head=x["n_head"], params_total=x["params"], params_nonembed=x["blocks"],
        flops_per_token=x["flops_tok"], tokens_300s=tokens, steps_300s=tokens / tbs,
        grad_accum=tbs / (b * SEQ_LEN), act_elems=act, mem_gb=mem_gb,
        tokens_per_param=tokens / x["blocks"], long_frac=x["n_long"] / c["DEPTH"],
        attn_window_mean=x["win_sum"] / c["DEPTH"],
    )


def _mean_lr_multiplier(c: Mapping[str, np.ndarray], n: int = 64) -> np.ndarray:
    """Time-average of train.py's LR schedule (warm-up, constant, warm-down to FINAL_LR_FRAC)."""
    p = (np.arange(n) + 0.5) / n
    wu = c["WARMUP_RATIO"][:, None]
    wd = c["WARMDOWN_RATIO"][:, None]
    fin = c["FINAL_LR_FRAC"][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        warm = np.where(wu > 0, p / np.where(wu > 0, wu, 1.0), 1.0)
        cool = (1.0 - p) / np.where(wd > 0, wd, 1.0)
    m = np.where(p < wu, warm, np.where(p < 1.0 - wd, 1.0, cool + (1.0 - cool) * fin))
    return m.mean(axis=1)


FEATURE_NAMES: tuple[str, ...] = (
    # raw HPs (log for the log-scaled ones)
    "DEPTH", "ASPECT_RATIO", "log2_HEAD_DIM", "log2_DEVICE_BATCH_SIZE", "log2_TOTAL_BATCH_SIZE",
    "log10_EMBEDDING_LR", "log10_UNEMBEDDING_LR", "log10_MATRIX_LR", "log10_SCALAR_LR",
    "WEIGHT_DECAY", "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "PATTERN_IDX",
    # physics
    "log2_model_dim", "n_head", "log10_params_total", "log10_params_nonembed", "log10_flops_per_token",
    "log10_tokens_300s", "log10_steps_300s", "log2_grad_accum", "log10_tokens_per_param",
    "mem_gb", "log10_act_elems", "long_frac", "attn_window_mean",
    # optimizer
    "log10_adam_scale_embedding_lr", "log10_adam_scale_unembedding_lr", "mean_lr_mult",
    "log10_matrix_lr_x_steps",
)


def feature_matrix(c: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model's input matrix (n, len(FEATURE_NAMES)) from column arrays."""
    ph = physical(c)
    adam_scale = (ph["model_dim"] / 768.0) ** -0.5  # AdamW LRs are scaled by (dim/768)^-0.5 in train.py
    mlr = _mean_lr_multiplier(c)
    cols = [
        c["DEPTH"], c["ASPECT_RATIO"], np.log2(c["HEAD_DIM"]), np.log2(c["DEVICE_BATCH_SIZE"]),
        np.log2(c["TOTAL_BATCH_SIZE"]), np.log10(c["EMBEDDING_LR"]), np.log10(c["UNEMBEDDING_LR"]),
        np.log10(c["MATRIX_LR"]), np.log10(c["SCALAR_LR"]), c["WEIGHT_DECAY"], c["WARMUP_RATIO"],
        c["WARMDOWN_RATIO"], c["FINAL_LR_FRAC"], c["PATTERN_IDX"].astype(float),
        np.log2(ph["model_dim"]), ph["n_head"], np.log10(ph["params_total"]), np.log10(ph["params_nonembed"]),
        np.log10(ph["flops_per_token"]), np.log10(ph["tokens_300s"]), np.log10(ph["steps_300s"]),
        np.log2(ph["grad_accum"]), np.log10(ph["tokens_per_param"]), ph["mem_gb"], np.log10(ph["act_elems"]),
        ph["long_frac"], ph["attn_window_mean"],
        np.log10(c["EMBEDDING_LR"] * adam_scale), np.log10(c["UNEMBEDDING_LR"] * adam_scale), mlr,
        np.log10(c["MATRIX_LR"] * mlr * ph["steps_300s"]),
    ]
    return np.column_stack(cols)


def normalized_hps(c: Mapping[str, np.ndarray]) -> np.ndarray:
    """The 14 HPs mapped to [0, 1] (log scale for log HPs) plus a one-hot of WINDOW_PATTERN scaled so a
    pattern mismatch counts like half the range of one numeric HP. Used for distances to the data."""
    out = []
    for h in NUMERIC_HPS:
        lo, hi = _BOUNDS[h]
        v = c[h]
        if h in LOG_HPS:
            out.append((np.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)))
        else:
            out.append((v - lo) / (hi - lo))
    onehot = np.eye(len(WINDOW_PATTERNS))[c["PATTERN_IDX"].astype(int)] * (0.5 / math.sqrt(2.0))
    return np.column_stack([*out, onehot])
