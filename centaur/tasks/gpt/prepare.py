"""Offline byte-level data for the bundled GPT task.

The default corpus is a deterministic selection of the installed Python standard library's
`*.py` sources (no network needed). `python prepare.py --source DIR` builds a corpus from any
directory of text files instead (e.g. a TinyStories or FineWeb text dump), see README.md.

Layout: `<data dir>/<corpus name>/{train.bin,val.bin,meta.json}`, raw uint8 bytes. The data dir
is `$CENTAUR_DATA_DIR` or `~/.cache/centaur/gpt`. Every file is written to a temporary name and
renamed into place, so concurrent trials that build the same corpus never see partial files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Task constants (not hyperparameters: the search space must exclude them)
VOCAB_SIZE = 256  # byte-level tokenizer: token id == byte value
DOC_SEPARATOR = b"\x00"  # never occurs in source text; marks file boundaries
TARGET_BYTES = 12 * 2**20  # stop adding stdlib files once the corpus reaches this size
BLOCK_BYTES = 2**16  # the train/val split works on blocks of this many bytes
VAL_EVERY = 20  # every 20th block (offset VAL_OFFSET) goes to validation: ~5 %
VAL_OFFSET = 10
DEFAULT_CORPUS = "stdlib"
# Directories of the stdlib left out: tests, third-party packages, bytecode, and generated
# data tables (code-page maps, pydoc topic dumps) that are not representative source code.
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data"}
)
TEXT_SUFFIXES = (".txt", ".md", ".py", ".json", ".jsonl", ".csv", ".rst", ".html", ".xml")


def data_dir() -> Path:
    """Root of the cached corpora."""
    env = os.environ.get("CENTAUR_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "centaur" / "gpt"


def stdlib_files(target_bytes: int = TARGET_BYTES) -> list[Path]:
    """Sorted stdlib `*.py` files (tests and site-packages excluded) up to `target_bytes` in total."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    # Sort by path relative to the stdlib root so the order does not depend on the install prefix.
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    chosen: list[Path] = []
    total = 0
    for path in found:
        if total >= target_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size + len(DOC_SEPARATOR)
    return chosen


def source_files(source: Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> list[Path]:
    """Sorted text files under `source` (or `source` itself when it is a file)."""
    if source.is_file():
        return [source]
    files = [p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
    files.sort(key=lambda p: p.relative_to(source).as_posix())
    return files


def concat_files(files: list[Path], max_bytes: int | None = None) -> bytes:
    """Concatenate files, each preceded by the separator byte; truncated to `max_bytes`."""
    parts: list[bytes] = []
    total = 0
    for path in files:
        data = path.read_bytes().replace(DOC_SEPARATOR, b"")
        parts.append(DOC_SEPARATOR + data)
        total += len(data) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    blob = b"".join(parts)
    return blob[:max_bytes] if max_bytes is not None else blob


def split_blob(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic interleaved split: block i of BLOCK_BYTES goes to val iff i % VAL_EVERY == VAL_OFFSET.

    Interleaving (rather than taking the tail) keeps val drawn from the same mix of files as train.
    """
    arr = np.frombuffer(blob, dtype=np.uint8)
    n_blocks = math.ceil(len(arr) / BLOCK_BYTES)
    is_val = np.zeros(len(arr), dtype=bool)
    for i in range(VAL_OFFSET, n_blocks, VAL_EVERY):
        is_val[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES] = True
    if not is_val.any():  # tiny corpus: fall back to the last 10 %
        is_val[int(len(arr) * 0.9) :] = True
    return np.ascontiguousarray(arr[~is_val]), np.ascontiguousarray(arr[is_val])


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared between users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_corpus(blob: bytes, name: str, source: str) -> Path:
    """Split and cache a corpus under data_dir()/name; returns that directory."""
    out = data_dir() / name
    train, val = split_blob(blob)
    meta = {
        "name": name,
        "source": source,
        "total_bytes": len(blob),
        "train_bytes": int(train.size),
        "val_bytes": int(val.size),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    _atomic_write(out / "train.bin", train.tobytes())
    _atomic_write(out / "val.bin", val.tobytes())
    # meta.json last: its presence means the corpus is complete.
    _atomic_write(out / "meta.json", json.dumps(meta, indent=2).encode())
    return out


def build_stdlib_corpus() -> bytes:
    """The default corpus as one byte string (deterministic for a given Python version)."""
    return concat_files(stdlib_files(), max_bytes=TARGET_BYTES)


def ensure_corpus(name: str = DEFAULT_CORPUS) -> Path:
    """Return the directory of corpus `name`, building the stdlib corpus on first use."""
    out = data_dir() / name
    if (out / "meta.json").is_file():
        return out
    if name != DEFAULT_CORPUS:
        raise FileNotFoundError(f"corpus {name!r} not found in {out}; build it with prepare.py --source DIR")
    return write_corpus(build_stdlib_corpus(), name, source=f"stdlib:{sysconfig.get_paths()['stdlib']}")


def load_split(name: str = DEFAULT_CORPUS) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) uint8 arrays of corpus `name`."""
    out = ensure_corpus(name)
    return np.fromfile(out / "train.bin", dtype=np.uint8), np.fromfile(out / "val.bin", dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, help="directory (or single file) of text to use instead of the stdlib")
    ap.add_argument("--name", help="corpus name (default: 'stdlib', or the source directory's name)")
    ap.add_argument("--max-bytes", type=int, default=None, help="truncate the corpus to this many bytes")
    ap.add_argument("--force", action="store_true", help="rebuild even if the corpus is cached")
    args = ap.parse_args(argv)

    if args.source is None:
        name = args.name or DEFAULT_CORPUS
        if args.force or not (data_dir() / name / "meta.json").is_file():
            blob = build_stdlib_corpus()
            if args.max_bytes:
                blob = blob[: args.max_bytes]
            write_corpus(blob, name, source=f"stdlib:{sysconfig.get_paths()['stdlib']}")
    else:
        src = args.source.expanduser().resolve()
        files = source_files(src)
        if not files:
            print(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {src}", file=sys.stderr)
            return 2
        name = args.name or src.stem
        write_corpus(concat_files(files, args.max_bytes), name, source=str(src))
    meta = json.loads((data_dir() / name / "meta.json").read_text())
    print(json.dumps(meta, indent=2))
    if name != DEFAULT_CORPUS:
        print(f"use it with: CENTAUR_GPT_CORPUS={name} python train.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
