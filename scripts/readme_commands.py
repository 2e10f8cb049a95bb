"""Print a command block of the README by its marker, so CI runs exactly what a new user reads.

    python scripts/readme_commands.py NAME      # e.g. main-job, setup, tests, surrogate

A block is marked in README.md by the comment `<!-- readme-command: NAME -->` on the line before its
```bash fence; the block's lines are printed as they are (continuation backslashes kept).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- readme-command: ([\w-]+) -->\s*\n```(?:bash|sh)\n(.*?)\n```", re.DOTALL)


def readme_commands(text: str | None = None) -> dict[str, list[str]]:
    """Every marked block of the README: name -> its command lines."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return {m.group(1): [line for line in m.group(2).splitlines() if line.strip()] for m in _BLOCK.finditer(text)}


def main(argv: list[str]) -> int:
    blocks = readme_commands()
    if len(argv) != 1 or argv[0] not in blocks:
        marks = ", ".join(sorted(blocks)) or "none"
        print(f"usage: readme_commands.py NAME; README.md marks: {marks}", file=sys.stderr)
        return 2
    print("\n".join(blocks[argv[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
