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

import functools
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


@functools.cache
def stdlib_dirs() -> tuple[Path, ...]:
    """Every Python standard library a sandbox could see: the interpreter's, and the `lib/python3*`
    folders of other installations under the system directories (a Debian python3 beside pyenv's, a
    Python bundled with a tool under /usr/lib or /opt), found to a depth of 6."""
    found = {stdlib_root().resolve()}
    for base in {sys.base_prefix, sys.prefix, "/usr", "/usr/local", "/usr/lib", "/opt"}:
        for lib, dirs, _ in _walk(Path(base), 6):
            if lib.name in ("lib", "lib64"):
                for d in dirs:
                    p = lib / d
                    if d.startswith("python3") and not p.is_symlink() and (p / "os.py").is_file():
                        found.add(p.resolve())
    return tuple(sorted(found))


def _walk(root: Path, depth: int):
    """os.walk to `depth` levels below `root`, not following links, skipping unreadable folders."""
    if not root.is_dir():
        return
    base = len(root.parts)
    for top, dirs, files in os.walk(root, onerror=lambda e: None):
        here = Path(top)
        yield here, dirs, files
        if len(here.parts) - base >= depth:
            dirs[:] = []


@functools.cache
def masks(names: tuple[str, ...]) -> tuple[Path, ...]:
    """The paths to hide in the sandboxes: each held-out package or module and its bytecode in every
    standard library of `stdlib_dirs()`, and anything named like them (a package folder, `name.py`,
    `name.pyi`) in the site-packages of those installations and of the environment (type stubs such as
    typeshed's mirror their text)."""
    out: set[Path] = set()
    packages = {n for n in names if not n.endswith(".py")}
    modules = {n[:-3] for n in names if n.endswith(".py")}
    for root in stdlib_dirs():
        for name in names:
            path = root / name
            if path.is_dir() or path.is_file():
                out.add(path)  # a tmpfs over a package: its __pycache__ goes with it
            if path.is_file():
                out.update(Path(p) for p in glob.glob(str(root / "__pycache__" / f"{path.stem}.*.pyc")))
    sites = {Path(p) for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    sites |= {root / "site-packages" for root in stdlib_dirs()} | {Path("/usr/lib/python3/dist-packages")}
    for site in sites:
        for top, dirs, files in _walk(site, 12):
            out.update(top / d for d in dirs if d in packages)
            out.update(top / f for f in files if f.rsplit(".", 1)[0] in modules and f.endswith((".py", ".pyi")))
            dirs[:] = [d for d in dirs if d not in packages]
    return tuple(sorted(out))
