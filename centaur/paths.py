"""Paths a user gives, made absolute once at the API boundary.

Trials run with their script's folder as working directory, and workers may start elsewhere, so a
relative path that travelled further would name another file than the one the user meant.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_URL_PATHS = ("sqlite:///", "journal:")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def absolute_path(path: str | Path) -> Path:
    """`path` against the caller's working directory, with `~` expanded and `..` folded."""
    return Path(os.path.abspath(Path(path).expanduser()))


def absolute_storage_url(url: str) -> str:
    """A SQLite or journal URL with its file made absolute; any other URL unchanged."""
    for prefix in _URL_PATHS:
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            path, sep, query = rest.partition("?")
            if not path or path == ":memory:":
                return url
            return f"{prefix}{absolute_path(path)}{sep}{query}"
    return url


def study_dirname(study_name: str) -> str:
    """A folder name for a study that stays inside its run directory (`../x`, `a/b` and `.` cannot
    escape or collide); a name that had to change gets a short hash of the original."""
    safe = _UNSAFE.sub("-", study_name).lstrip(".-") or "study"
    if safe == study_name:
        return safe
    return f"{safe[:80]}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"
