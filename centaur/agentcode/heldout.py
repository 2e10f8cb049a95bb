"""The held-out split of agent-code's declared evaluation, out of reach of every sandboxed process (#29).

The bundled task's corpus is the Python standard library's source, and a sandbox has to see the
standard library to run Python at all, so any split of that corpus can be rebuilt inside it (#29 did it,
hash-identical, and answered the scorer by lookup). Agent-code therefore scores the stdlib corpus on
whole stdlib packages that no training run needs (`HELD_OUT`, taken in order until `HELD_OUT_BYTES`),
trains on the rest, and hides those packages - the sources and their bytecode, in every Python
installation in the view - from both sandboxes (`masks`). The held-out bytes live only in the tuner's
memory. A corpus built from another source (`prepare.py --source DIR`) keeps its own split: its
source folder is not in the view.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Stdlib packages and modules that neither Python, numpy, torch nor a training script imports, in the
# order they are taken (GUI and legacy code; Debian ships the first two as separate packages).
HELD_OUT = ("idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3", "xmlrpc", "wsgiref", "mailbox.py",
            "imaplib.py", "nntplib.py", "smtplib.py", "ftplib.py", "poplib.py")
HELD_OUT_BYTES = 2**20  # enough for the GPU-scale evaluation (2**18 bytes in 2048-byte windows) four times
STDLIB_CORPUS = "stdlib"


@dataclass(frozen=True)
class Split:
    """Agent-code's split of one corpus: the training bytes the sandbox may see, and the held-out bytes,
    which stay in the tuner."""

    train: np.ndarray
    held_out: np.ndarray
    held_out_names: tuple[str, ...] = ()  # stdlib paths (relative) hidden from the sandboxes; () for other corpora


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def held_out_names(root: Path | None = None, target_bytes: int = HELD_OUT_BYTES) -> tuple[str, ...]:
    """The entries of HELD_OUT present in the interpreter's stdlib, in order, until `target_bytes`."""
    root = root or stdlib_root()
    chosen, total = [], 0
    for name in HELD_OUT:
        files = _files(root / name)
        if not files:
            continue
        chosen.append(name)
        total += sum(f.stat().st_size for f in files)
        if total >= target_bytes:
            break
    return tuple(chosen)


def _files(path: Path) -> list[Path]:
    from centaur.tasks.gpt.prepare import EXCLUDED_DIRS

    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*.py") if not set(p.relative_to(path).parts[:-1]) & EXCLUDED_DIRS)


def build_split(data_dir: Path, corpus: str) -> Split:
    """The split agent-code scores `corpus` on. For the stdlib corpus: training = the task's recipe
    without the held-out packages (prepare.split_blob's training part), held-out = those packages.
    Otherwise the corpus's own train.bin and val.bin (built from files outside the view)."""
    from centaur.tasks.gpt import prepare

    if corpus != STDLIB_CORPUS:
        src = Path(data_dir) / corpus
        return Split(np.fromfile(src / "train.bin", dtype=np.uint8), np.fromfile(src / "val.bin", dtype=np.uint8))
    root = stdlib_root()
    names = held_out_names(root)
    hidden = [f for name in names for f in _files(root / name)]
    if not hidden:
        raise RuntimeError(f"none of the held-out stdlib packages {HELD_OUT} is installed under {root}")
    hidden_set = set(hidden)
    rest = [f for f in prepare.stdlib_files() if f not in hidden_set]
    train, _ = prepare.split_blob(prepare.concat_files(rest, max_bytes=prepare.TARGET_BYTES))
    held = np.frombuffer(prepare.concat_files(hidden), dtype=np.uint8)
    return Split(np.ascontiguousarray(train), held, names)


def write_training_view(split: Split, corpus: str, dest: Path) -> Path:
    """`dest/corpus/` with the training bytes, a placeholder val.bin (zeros, the held-out length) and a
    meta.json without host paths; returns `dest` (the training run's $CENTAUR_DATA_DIR)."""
    out = Path(dest) / corpus
    out.mkdir(parents=True, exist_ok=True)
    split.train.tofile(out / "train.bin")
    with open(out / "val.bin", "wb") as f:
        f.truncate(len(split.held_out))  # zeros, sparse: the progress estimates during training mean nothing
    meta = {"name": corpus, "source": "agent-code training split", "train_bytes": int(split.train.size),
            "val_bytes": int(split.held_out.size), "note": "val.bin is a placeholder"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return Path(dest)


def stdlib_dirs() -> list[Path]:
    """Every Python standard library a sandbox could see: the interpreter's, and the `lib/python3*`
    folders of other installations under the system directories (a Debian python3 beside pyenv's)."""
    found = {stdlib_root().resolve()}
    bases = {sys.base_prefix, sys.prefix, "/usr", "/usr/local", "/opt", "/opt/*", "/opt/*/*", "/opt/conda"}
    for base in bases:
        for lib in ("lib", "lib64"):
            for d in glob.glob(os.path.join(base, lib, "python3*")):
                p = Path(d)
                if p.is_dir() and not p.is_symlink() and (p / "os.py").is_file():
                    found.add(p.resolve())
    return sorted(found)


def masks(names: tuple[str, ...]) -> list[Path]:
    """The paths to hide in the sandboxes: each held-out package or module, and its bytecode, in every
    standard library of `stdlib_dirs()`."""
    out: list[Path] = []
    for root in stdlib_dirs():
        for name in names:
            path = root / name
            if path.is_dir():
                out.append(path)  # a tmpfs over the package: its __pycache__ goes with it
            elif path.is_file():
                out.append(path)
                stem = path.stem
                out += sorted(Path(p) for p in glob.glob(str(root / "__pycache__" / f"{stem}.*.pyc")))
    return out
