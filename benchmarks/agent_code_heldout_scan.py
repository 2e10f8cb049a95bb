"""Search every file of agent-code's training view for held-out text (issue #29): the slow red-team test
searches the Python installations; this searches everything in the view (/usr, /opt, the Python and
the environment, the task), once, with `grep -rlF -a` inside the sandbox. Needles are 64-byte pieces of
the held-out split (not in the training split); controls are pieces of the training split, which must be found.

    python benchmarks/agent_code_heldout_scan.py [--needles 6]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np

from centaur.agentcode.bwrap import View, build_argv
from centaur.agentcode.heldout import build_split, masks
from centaur.tasks.gpt import TASK_DIR


def pieces(data: np.ndarray, k: int, seed: int, avoid: np.ndarray | None = None) -> list[bytes]:
    """k printable 64-byte pieces of `data` that occur once in it and not in `avoid` (a piece of the
    held-out split that the training split has too is a common idiom, not held-out text)."""
    rng, blob, out = np.random.default_rng(seed), data.tobytes(), []
    other = b"" if avoid is None else avoid.tobytes()
    while len(out) < k:
        start = int(rng.integers(0, len(blob) - 64))
        piece = blob[start:start + 64]
        if all(32 <= c < 127 for c in piece) and blob.count(piece) == 1 and piece not in other:
            out.append(piece)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--needles", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    split = build_split(Path("unused"), "stdlib")
    needles = pieces(split.held_out, args.needles, args.seed, split.train)
    controls = pieces(split.train, 2, args.seed + 1)
    grep = ["grep", "-rlF", "-a", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev"]
    grep += [a for n in needles + controls for a in ("-e", n.decode())] + ["/"]
    view = View(read_only=[TASK_DIR], hidden=list(masks(split.held_out_names)), chdir="/")
    t0 = time.perf_counter()
    done = subprocess.run(build_argv(grep, view, env={"PATH": "/usr/bin:/bin"}), capture_output=True, text=True)
    files = done.stdout.split()
    print(f"held out: {', '.join(split.held_out_names)} ({len(split.held_out)} bytes); masks: {len(view.hidden)}")
    print(f"searched the whole view in {time.perf_counter() - t0:.0f} s; {len(files)} files hold a needle")
    for kind, group in (("held-out", needles), ("control", controls)):
        for i, needle in enumerate(group):
            where = [f for f in files if Path(f).is_file() and needle in Path(f).read_bytes()]
            print(f"{kind} {i}: {len(where)} files {where[:2]}")


if __name__ == "__main__":
    main()
