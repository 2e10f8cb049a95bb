"""Byte-level GPT trained for a fixed wall-clock budget; the bundled task that centaur tunes.

Run `python train.py` from this directory. The ALL_CAPS literals below the imports are the
hyperparameters the tuner rewrites; the task constants after them are excluded from the
search space. The script prints a `---` summary block whose `val_bpb` is the metric. While it trains it prints a
cheap estimate of it, `progress t=<seconds>s val_est=<bpb>`, at every eighth of the time budget of
counted training (bits per byte on a fixed 1/16 of the evaluation bytes; the evaluation is not counted
as training time): the intermediate values a pruned study reports (centaur.toml's `[task] progress`).

Exit codes: 0 ok, 3 invalid configuration (`INVALID: ...`, before any training),
4 diverged (`FAIL: loss diverged at step N`), 1 crash or out of memory (Python traceback).
"""

from __future__ import annotations

import gc
import math
import os
import resource
import sys
import threading
import time

# Idle OpenMP threads sleep instead of spinning: with spinning, a trial that shares its cores with
# another process (a parallel trial, an LLM server) runs up to 10x slower. Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from prepare import DEFAULT_CORPUS, VOCAB_SIZE, load_split  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Hyperparameters (CPU-scale defaults; the 14 names of the reference task)
DEPTH = 2  # number of transformer blocks
ASPECT_RATIO = 64  # model_dim = ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
HEAD_DIM = 32  # width of one attention head; n_head = model_dim / HEAD_DIM
WINDOW_PATTERN = "SSSL"  # per-layer attention window, repeated; S = short sliding window, L = full
TOTAL_BATCH_SIZE = 2**12  # tokens per optimizer step (gradient accumulation fills it)
DEVICE_BATCH_SIZE = 16  # sequences per forward/backward micro-batch
EMBEDDING_LR = 0.6  # AdamW LR of the token embedding
UNEMBEDDING_LR = 0.004  # AdamW LR of lm_head
MATRIX_LR = 0.04  # Muon LR of the 2-D block matrices
SCALAR_LR = 0.5  # AdamW LR of the per-layer residual scalars
WEIGHT_DECAY = 0.2  # Muon (cautious) weight decay, decays linearly to 0 over training
WARMUP_RATIO = 0.0  # fraction of the time budget for linear LR warm-up
WARMDOWN_RATIO = 0.5  # fraction of the time budget for the final linear LR warm-down
FINAL_LR_FRAC = 0.0  # LR multiplier reached at the end of the warm-down

# ---------------------------------------------------------------------------------------------
# Task constants (excluded from the search space). CPU-scale values; GPU scale replaces them.
SEED = 42  # overridden by $CENTAUR_SEED
MAX_SEQ_LEN = 256  # context length in bytes
TIME_BUDGET = 40  # seconds of counted training time
EVAL_BYTES = 2**17  # fixed number of validation bytes scored, so val_bpb compares across configs

_GPU_SCALE = {"MAX_SEQ_LEN": 2048, "TIME_BUDGET": 300, "EVAL_BYTES": 2**18}  # 2**18 fits the stdlib val split
# Reference GPU-scale hyperparameters, applied only with CENTAUR_GPT_PRESET=reference (never when tuning).
_REFERENCE_PRESET = {
    "DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 2**19,
    "DEVICE_BATCH_SIZE": 128, "EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04,
    "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2, "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0,
}  # fmt: skip
_H100_BF16_PEAK_FLOPS = 989.5e12
_CPU_PEAK_FLOPS_PER_THREAD = 1.0e11  # nominal (AVX-512 FMA at ~3 GHz); MFU on CPU is indicative only
_PROGRESS_MARKS = 8  # progress estimates per run, at equal shares of TIME_BUDGET (the last share is the result)
_PROGRESS_SHARE = 16  # an estimate scores EVAL_BYTES // this many bytes
# A configuration must fit this many optimizer steps into TIME_BUDGET; one whose first steps are slower is
# ended at once as invalid (StepGuard) instead of running its uncounted steps and one overlong counted step
# into the trial's timeout.
_MIN_STEPS = 4
# ... but never below this many seconds: a test's 2 s budget would otherwise end a small model whose first
# steps a loaded machine slows past half a second.
_MIN_STEP_LIMIT_S = 5.0
_ADAM_BETAS = (0.8, 0.95)
_SOFTCAP = 15.0


def _settings() -> dict:
    """Resolve scale, device and environment overrides."""
    use_cuda = torch.cuda.is_available()
    # CPU scale everywhere unless asked: the bundled defaults and centaur.toml are written for it, and at GPU
    # scale (2048-byte context) those defaults are not even valid (TOTAL_BATCH_SIZE < one micro-batch).
    scale = os.environ.get("CENTAUR_GPT_SCALE", "").strip().lower() or "cpu"
    if scale not in ("cpu", "gpu"):
        _invalid(f"CENTAUR_GPT_SCALE must be cpu or gpu, got {scale!r}")
    if scale == "gpu":
        globals().update(_GPU_SCALE)
    if os.environ.get("CENTAUR_GPT_PRESET", "").strip().lower() == "reference":
        globals().update(_REFERENCE_PRESET)
    try:
        threads = int(os.environ.get("CENTAUR_THREADS") or len(os.sched_getaffinity(0)))
        seed = int(os.environ.get("CENTAUR_SEED", SEED))
    except ValueError as exc:
        _invalid(f"bad environment override: {exc}")
    return {
        "scale": scale,
        "device": torch.device("cuda" if use_cuda else "cpu"),
        "threads": max(1, threads),
        "seed": seed,
        "short_window": MAX_SEQ_LEN // 2,  # the reference's S/L ratio: 1024 of 2048
        "uncounted_steps": 10 if scale == "gpu" else 2,  # warm-up/compile steps not timed
        "momentum_ramp_steps": 300 if scale == "gpu" else 50,
        "compile": os.environ.get("CENTAUR_COMPILE", "0") == "1" and use_cuda,
        "corpus": os.environ.get("CENTAUR_GPT_CORPUS", DEFAULT_CORPUS),
    }


def _invalid(reason: str) -> None:
    print(f"INVALID: {reason}", flush=True)
    sys.exit(3)


class StepGuard:
    """Ends the run as invalid (exit 3, `INVALID:`) the moment one of the optimizer steps `first` to `last`
    (exclusive) runs longer than `limit` seconds. A thread watches the clock, so a step that takes minutes (a
    large model with a large TOTAL_BATCH_SIZE on a CPU) is stopped at the limit, not when it finally returns."""

    def __init__(self, limit: float, first: int, last: int, describe: str) -> None:
        self.limit, self.first, self.last, self.describe = limit, first, last, describe
        self._started: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="step-guard", daemon=True).start()

    def step_started(self, step: int) -> None:
        if step >= self.last:
            self._done.set()
        elif step >= self.first:
            self._started = time.perf_counter()

    def step_ended(self) -> None:
        self._started = None

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            started = self._started
            if started is not None and time.perf_counter() - started > self.limit:
                print(f"\nINVALID: one optimizer step took more than {self.limit:.1f} s (1/{_MIN_STEPS} of "
                      f"TIME_BUDGET = {TIME_BUDGET} s, at least {_MIN_STEP_LIMIT_S:g} s) ({self.describe}); lower "
                      "TOTAL_BATCH_SIZE or the model size", flush=True)  # fmt: skip
                os._exit(3)


def validate_config() -> None:
    """Reject configurations that cannot run, before any memory is allocated."""
    for name in ("DEPTH", "HEAD_DIM", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"):
        value = globals()[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _invalid(f"{name} must be a positive integer, got {value!r}")
    if HEAD_DIM % 2:
        _invalid(f"HEAD_DIM must be even for rotary embeddings, got {HEAD_DIM}")
    if not ASPECT_RATIO > 0:
        _invalid(f"ASPECT_RATIO must be > 0, got {ASPECT_RATIO!r}")
    if not isinstance(WINDOW_PATTERN, str) or not WINDOW_PATTERN or set(WINDOW_PATTERN) - {"S", "L"}:
        _invalid(f"WINDOW_PATTERN must be a non-empty string over {{S, L}}, got {WINDOW_PATTERN!r}")
    tokens_per_micro = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    if TOTAL_BATCH_SIZE % tokens_per_micro:
        _invalid(
            f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN "
            f"({DEVICE_BATCH_SIZE} * {MAX_SEQ_LEN} = {tokens_per_micro})"
        )
    for name in ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY"):
        value = globals()[name]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            _invalid(f"{name} must be a finite number >= 0, got {value!r}")
    for name in ("WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC"):
        value = globals()[name]
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            _invalid(f"{name} must be in [0, 1], got {value!r}")


# ---------------------------------------------------------------------------------------------
# Model


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (1, 1, T, head_dim/2), base 10k."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos()[None, None], angles.sin()[None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None):
        b, t, _ = x.shape
        q, k, v = (
            lin(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2) for lin in (self.c_q, self.c_k, self.c_v)
        )
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # QK norm
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.c_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, head_dim: int) -> None:
        super().__init__()
        self.attn = Attention(dim, n_head, head_dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None):
        x = x + self.attn(rms_norm(x), cos, sin, mask)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, depth: int, dim: int, head_dim: int, windows: list[int], seq_len: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB_SIZE, dim)
        self.blocks = nn.ModuleList(Block(dim, dim // head_dim, head_dim) for _ in range(depth))
        self.lm_head = nn.Linear(dim, VOCAB_SIZE, bias=False)
        # Learned per-layer mixing of the running residual and the initial embedding x0.
        self.resid_lambdas = nn.Parameter(torch.ones(depth))
        self.x0_lambdas = nn.Parameter(torch.full((depth,), 0.1))
        self.windows = windows
        cos, sin = rotary_tables(seq_len, head_dim, self.wte.weight.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # One banded causal mask per sliding-window size, built once (also keeps torch.compile graphs static).
        i = torch.arange(seq_len, device=self.wte.weight.device)
        dist = i[:, None] - i[None, :]
        self.masks = {w: (dist >= 0) & (dist < w) for w in sorted(set(windows)) if w < seq_len}

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = math.sqrt(3.0) / math.sqrt(self.wte.weight.size(1))
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # blocks start as identity maps
            nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        t = idx.size(1)
        cos, sin = self.cos[:, :, :t], self.sin[:, :, :t]
        x = x0 = rms_norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            mask = self.masks.get(self.windows[i])
            x = block(x, cos, sin, None if mask is None else mask[:t, :t])
        logits = self.lm_head(rms_norm(x)).float()
        logits = _SOFTCAP * torch.tanh(logits / _SOFTCAP)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def layer_windows(pattern: str, depth: int, short: int, full: int) -> list[int]:
    """Window size per layer: the pattern repeats across layers; the last layer is always full."""
    sizes = [short if pattern[i % len(pattern)] == "S" else full for i in range(depth)]
    sizes[-1] = full
    return sizes


# ---------------------------------------------------------------------------------------------
# Optimizer: Muon for block matrices, AdamW for the rest


@torch.no_grad()
def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonalisation (U V^T of the SVD) of a batch of matrices, quintic iteration."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum + Newton-Schulz orthogonalised updates, batched over equal-shape matrices."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.95, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for p in self.param_groups[0]["params"]:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        self._groups = list(by_shape.values())

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        cfg = self.param_groups[0]
        lr, mom, wd = cfg["lr"], cfg["momentum"], cfg["weight_decay"]
        for params in self._groups:
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "buf" not in state:
                state["buf"] = torch.zeros_like(grads)
            buf = state["buf"]
            buf.lerp_(grads, 1 - mom)
            update = newton_schulz(grads.lerp_(buf, mom))  # Nesterov look-ahead
            rows, cols = params[0].shape
            scale = lr * math.sqrt(max(1.0, rows / cols))
            for p, u in zip(params, update, strict=True):
                if wd:
                    # Cautious weight decay: only shrink where the update already points towards zero.
                    p.sub_(p * (u * p > 0), alpha=lr * wd)
                p.add_(u, alpha=-scale)


# ---------------------------------------------------------------------------------------------
# Data and evaluation


class Batches:
    """Random crops of the training bytes; deterministic for a seed."""

    def __init__(self, data: np.ndarray, batch: int, seq_len: int, seed: int, device: torch.device):
        self.data, self.batch, self.seq_len, self.device = data, batch, seq_len, device
        self.rng = np.random.default_rng(seed)
        self.offsets = np.arange(seq_len + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.data) - self.seq_len - 1, size=self.batch)
        chunk = torch.from_numpy(self.data[starts[:, None] + self.offsets].astype(np.int64))
        if self.device.type == "cuda":
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate_bpb(model: nn.Module, val: np.ndarray, batch: int, device: torch.device, autocast) -> float:
    """Bits per byte over EVAL_BYTES predicted bytes: EVAL_BYTES // MAX_SEQ_LEN windows spread evenly
    over the validation split (the same bytes for every configuration)."""
    n_seq = EVAL_BYTES // MAX_SEQ_LEN
    if n_seq < 1 or n_seq * MAX_SEQ_LEN + 1 > len(val):
        raise ValueError(f"validation split has {len(val)} bytes, EVAL_BYTES needs {n_seq * MAX_SEQ_LEN + 1}")
    starts = np.linspace(0, len(val) - MAX_SEQ_LEN - 1, n_seq).astype(np.int64)
    windows = torch.from_numpy(val[starts[:, None] + np.arange(MAX_SEQ_LEN + 1)].astype(np.int64))
    total_nats = 0.0
    for i in range(0, n_seq, batch):
        chunk = windows[i : i + batch].to(device)
        with autocast:
            total_nats += model(chunk[:, :-1], chunk[:, 1:], reduction="sum").item()
    return total_nats / (n_seq * MAX_SEQ_LEN) / math.log(2)


@torch.no_grad()
def estimate_bpb(model: nn.Module, val: np.ndarray, batch: int, device: torch.device, autocast) -> float:
    """A cheap intermediate estimate of val_bpb for progress lines: bits per byte over a fixed
    1/_PROGRESS_SHARE of the evaluation bytes, windows spread evenly over the validation split."""
    n_seq = max(1, EVAL_BYTES // _PROGRESS_SHARE // MAX_SEQ_LEN)
    starts = np.linspace(0, len(val) - MAX_SEQ_LEN - 1, n_seq).astype(np.int64)
    windows = torch.from_numpy(val[starts[:, None] + np.arange(MAX_SEQ_LEN + 1)].astype(np.int64))
    total_nats = 0.0
    for i in range(0, n_seq, batch):
        chunk = windows[i : i + batch].to(device)
        with autocast:
            total_nats += model(chunk[:, :-1], chunk[:, 1:], reduction="sum").item()
    return total_nats / (n_seq * MAX_SEQ_LEN) / math.log(2)


# ---------------------------------------------------------------------------------------------


def lr_multiplier(progress: float) -> float:
    """Linear warm-up, constant, then linear warm-down to FINAL_LR_FRAC; progress in [0, 1].
    If warm-up and warm-down overlap (ratios summing past 1), warm-up wins, as in the reference."""
    if WARMUP_RATIO > 0 and progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if WARMDOWN_RATIO <= 0 or progress <= 1 - WARMDOWN_RATIO:
        return 1.0
    remaining = max(0.0, 1.0 - progress) / WARMDOWN_RATIO
    return remaining + (1 - remaining) * FINAL_LR_FRAC


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    t_begin = time.time()
    cfg = _settings()
    validate_config()
    device = cfg["device"]
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg["threads"])
    if device.type == "cuda":
        frac = os.environ.get("CENTAUR_CUDA_MEM_FRACTION")
        if frac:
            torch.cuda.set_per_process_memory_fraction(float(frac))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.manual_seed(cfg["seed"])
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    train_data, val_data = load_split(cfg["corpus"])
    dim = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    windows = layer_windows(WINDOW_PATTERN, DEPTH, cfg["short_window"], MAX_SEQ_LEN)
    with torch.device(device):
        model = GPT(DEPTH, dim, HEAD_DIM, windows, MAX_SEQ_LEN)
    model.init_weights()
    num_params = sum(p.numel() for p in model.parameters())
    matrices = [p for b in model.blocks for p in b.parameters() if p.ndim == 2]
    # Reference rule: AdamW LRs scale with (dim/768)^-0.5 so they transfer across widths.
    adam_scale = (dim / 768) ** -0.5
    adam = torch.optim.AdamW(
        [
            {"params": [model.lm_head.weight], "lr": UNEMBEDDING_LR * adam_scale},
            {"params": [model.wte.weight], "lr": EMBEDDING_LR * adam_scale},
            {"params": [model.resid_lambdas], "lr": SCALAR_LR * 0.01},
            {"params": [model.x0_lambdas], "lr": SCALAR_LR, "betas": (0.96, 0.95)},
        ],
        lr=0.0, betas=_ADAM_BETAS, eps=1e-10, weight_decay=0.0,
    )  # fmt: skip
    muon = Muon(matrices, lr=MATRIX_LR, weight_decay=WEIGHT_DECAY)
    for group in adam.param_groups + muon.param_groups:
        group["initial_lr"] = group["lr"]
    step_model = torch.compile(model) if cfg["compile"] else model

    grad_accum = TOTAL_BATCH_SIZE // (DEVICE_BATCH_SIZE * MAX_SEQ_LEN)
    batches = Batches(train_data, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, cfg["seed"], device)
    # Matmul FLOPs per token: 6 per non-embedding weight plus attention over the (windowed) context.
    nonembed = sum(p.numel() for p in matrices) + model.lm_head.weight.numel()
    flops_per_token = 6 * nonembed + sum(12 * dim * min(w, MAX_SEQ_LEN) for w in windows)
    peak_flops = _H100_BF16_PEAK_FLOPS if device.type == "cuda" else _CPU_PEAK_FLOPS_PER_THREAD * cfg["threads"]
    print(
        f"scale {cfg['scale']} | device {device.type} | threads {cfg['threads']} | seed {cfg['seed']} | "
        f"dim {dim} | heads {dim // HEAD_DIM} | layers {DEPTH} | params {num_params / 1e6:.3f}M | "
        f"grad_accum {grad_accum} | windows {windows}",
        flush=True,
    )

    # Every uncounted step and the first counted one; with torch.compile the first counted one only (compiling
    # a step may take longer than the limit).
    last = cfg["uncounted_steps"] + 1
    guard = StepGuard(max(TIME_BUDGET / _MIN_STEPS, _MIN_STEP_LIMIT_S), last - 1 if cfg["compile"] else 0, last,
                      f"{num_params / 1e6:.1f}M parameters, {TOTAL_BATCH_SIZE} tokens per step")  # fmt: skip
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    end = "\r" if sys.stdout.isatty() else "\n"
    x, y = batches.next()
    step, counted = 0, 0.0
    every = TIME_BUDGET / _PROGRESS_MARKS
    next_mark = every
    while True:
        sync()
        t0 = time.perf_counter()
        guard.step_started(step)
        loss_sum = 0.0
        for _ in range(grad_accum):
            with autocast:
                loss = step_model(x, y)
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
            x, y = batches.next()
        progress = min(counted / TIME_BUDGET, 1.0)
        lrm = lr_multiplier(progress)
        for group in adam.param_groups + muon.param_groups:
            group["lr"] = group["initial_lr"] * lrm
        ramp = min(step / cfg["momentum_ramp_steps"], 1.0)
        muon.param_groups[0]["momentum"] = 0.85 + 0.10 * ramp
        muon.param_groups[0]["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        adam.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        train_loss = float(loss_sum) / grad_accum
        if not math.isfinite(train_loss) or train_loss > 100:
            print(f"\nFAIL: loss diverged at step {step}", flush=True)
            sys.exit(4)
        sync()
        guard.step_ended()
        dt = time.perf_counter() - t0
        if step >= cfg["uncounted_steps"]:
            counted += dt
        step += 1
        if step == 1:
            gc.collect()
            gc.freeze()  # nothing allocated so far needs collecting; avoids GC pauses in the loop
            gc.disable()
        tok_s = TOTAL_BATCH_SIZE / dt
        print(
            f"step {step:05d} ({100 * min(counted / TIME_BUDGET, 1):5.1f}%) | loss {train_loss:.4f} | "
            f"lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f}",
            end=end,
            flush=True,
        )
        if step > cfg["uncounted_steps"] and counted >= TIME_BUDGET:
            break
        if counted >= next_mark:  # an intermediate estimate, outside the counted time
            mark = int(counted // every) * every
            estimate = estimate_bpb(model, val_data, DEVICE_BATCH_SIZE, device, autocast)
            if end == "\r":
                print()  # below the live step line
            print(f"progress t={mark:g}s val_est={estimate:.4f}", flush=True)
            next_mark = mark + every
    if end == "\r":
        print()

    gc.enable()
    model.eval()
    val_bpb = evaluate_bpb(model, val_data, DEVICE_BATCH_SIZE, device, autocast)
    counted_steps = step - cfg["uncounted_steps"]
    tokens_per_second = counted_steps * TOTAL_BATCH_SIZE / counted if counted > 0 else 0.0
    mfu = 100 * flops_per_token * tokens_per_second / peak_flops
    rss = peak_rss_mb()
    vram = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {counted:.1f}")
    print(f"total_seconds:    {time.time() - t_begin:.1f}")
    print(f"peak_vram_mb:     {vram:.1f}")
    print(f"peak_rss_mb:      {rss:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {step * TOTAL_BATCH_SIZE / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.3f}")
    print(f"depth:            {DEPTH}")
    print(f"tokens_per_second: {tokens_per_second:.0f}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
