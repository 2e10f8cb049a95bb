"""Reading a JSON object out of a model's free text: clean JSON, code fences, or the first balanced object."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|python)?[ \t]*\n?(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def extract_json(text: str | None) -> dict[str, Any] | None:
    """The first JSON object in `text`, or None.

    Tries, in order: the whole text; each fenced code block; every balanced ``{...}`` span from left
    to right. A span that is not JSON but a Python dict literal (single quotes, True/None), as
    small models often write, is accepted too. Reasoning blocks (``<think>...</think>``) are skipped.
    """
    if not text:
        return None
    text = _THINK.sub("", text).strip()
    candidates = [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        obj = _loads(candidate)
        if obj is not None:
            return obj
    for span in balanced_objects(text):
        obj = _loads(span)
        if obj is not None:
            return obj
    return None


def extract_number(obj: Any, keys: tuple[str, ...]) -> float | None:
    """A finite number under one of `keys` of a parsed object (or the object itself if it is a number)."""
    if isinstance(obj, dict):
        for key in keys:
            if key in obj:
                return _finite(obj[key])
        if len(obj) == 1:  # a single value under an unexpected name is still the answer
            return _finite(next(iter(obj.values())))
        return None
    return _finite(obj)


def balanced_objects(text: str) -> list[str]:
    """Every top-level balanced ``{...}`` span, scanning each '{' as a possible start (strings respected)."""
    spans = []
    start = text.find("{")
    while start != -1:
        end = _match_brace(text, start)
        if end is not None:
            spans.append(text[start : end + 1])
        start = text.find("{", start + 1)
    return spans


def _match_brace(text: str, start: int) -> int | None:
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _loads(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        cleaned = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
        try:
            obj = json.loads(cleaned)
        except ValueError:
            try:
                obj = ast.literal_eval(cleaned)  # a Python dict literal; literal_eval runs no code
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                return None
    return obj if isinstance(obj, dict) else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None
