"""Parse an LLM reply into a description and SEARCH/REPLACE edits, and apply them strictly."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

# The reply format asked for in the prompt (the aider-style block most code models know).
_BLOCK = re.compile(
    r"^[ \t]*<{5,9} ?SEARCH[ \t]*\n(?P<search>.*?)^[ \t]*={5,9}[ \t]*\n(?P<replace>.*?)^[ \t]*>{5,9} ?REPLACE[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_DESCRIPTION = re.compile(r"^\s*\**DESCRIPTION\**\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
MAX_DESCRIPTION = 200


class EditError(ValueError):
    """The reply holds no edit, or an edit does not apply to the current script."""


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str


@dataclass
class Proposal:
    description: str
    edits: list[Edit] = field(default_factory=list)


def parse_reply(text: str) -> Proposal:
    """The description line and every SEARCH/REPLACE block of a reply; raises EditError if it has no block."""
    text = (text or "").replace("\r\n", "\n")
    match = _DESCRIPTION.search(text)
    description = match.group(1).strip()[:MAX_DESCRIPTION] if match else ""
    edits = [Edit(m.group("search"), m.group("replace")) for m in _BLOCK.finditer(text)]
    if not edits:
        raise EditError("the reply contains no SEARCH/REPLACE block")
    if not description:
        description = "(no description given)"
    return Proposal(description, edits)


def description_of(text: str) -> str:
    """The DESCRIPTION line of a reply that may hold no usable edit."""
    match = _DESCRIPTION.search(text or "")
    return match.group(1).strip()[:MAX_DESCRIPTION] if match else "(no usable edit in the reply)"


def apply_edits(source: str, edits: list[Edit]) -> str:
    """Apply each edit in order; each SEARCH text must occur exactly once in the current text.

    No fuzzy matching: an edit that was written against text the model misremembered is rejected,
    so what runs is exactly what the recorded diff says.
    """
    for i, edit in enumerate(edits, 1):
        if not edit.search.strip():
            raise EditError(f"edit {i}: empty SEARCH text")
        count = source.count(edit.search)
        if count == 0:
            first = edit.search.strip().splitlines()[0][:80]
            raise EditError(f"edit {i}: SEARCH text not found in the script (first line: {first!r})")
        if count > 1:
            raise EditError(f"edit {i}: SEARCH text occurs {count} times; include more lines to make it unique")
        source = source.replace(edit.search, edit.replace, 1)
    return source


def unified_diff(before: str, after: str, name: str = "train.py") -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{name}", f"b/{name}", n=2
        )
    )
