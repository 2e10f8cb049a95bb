"""Approximate token counting and history capping, so that no prompt exceeds the context window."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

MESSAGE_OVERHEAD = 8  # chat-template tokens around each message (role markers, separators)


class TokenCounter:
    """Counts tokens as characters / chars_per_token.

    Starts at 3.5 characters per token and learns from the server: after each call the client
    reports the real prompt tokens, and the counter keeps the most pessimistic ratio it has seen
    (numbers-heavy prompts tokenize denser than prose), so estimates err on the safe side.
    """

    def __init__(self, chars_per_token: float = 3.5, floor: float = 1.5) -> None:
        self.chars_per_token = chars_per_token
        self._floor = floor
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def count_messages(self, messages: Iterable[dict[str, str]]) -> int:
        return sum(self.count(str(m.get("content") or "")) + MESSAGE_OVERHEAD for m in messages)

    def observe(self, messages: Sequence[dict[str, str]], prompt_tokens: int | None) -> None:
        """Calibrate with the server's prompt token count for `messages`."""
        if not prompt_tokens or prompt_tokens <= 0:
            return
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        effective = prompt_tokens - MESSAGE_OVERHEAD * len(messages)
        if chars < 200 or effective <= 0:  # too short to say anything about the ratio
            return
        ratio = max(self._floor, chars / effective)
        with self._lock:
            self.chars_per_token = min(self.chars_per_token, ratio)


def cap_history(
    rows: Sequence[T],
    *,
    render: Callable[[T], str],
    budget_tokens: int,
    counter: TokenCounter,
    rank: Callable[[T], float] | None = None,
    last_k: int | None = None,
    best_k: int | None = None,
) -> tuple[list[T], int]:
    """Choose rows (chronological input) for a prompt: the best `best_k` by `rank` (lower is better)
    and the most recent `last_k`, alternately, while they fit `budget_tokens`.

    Returns the chosen rows in their original order and how many were left out, which the caller
    states in the prompt ("N more evaluations not shown") so the model knows the history is partial.
    """
    n = len(rows)
    last_k = n if last_k is None else min(last_k, n)
    best_k = 0 if rank is None else (n if best_k is None else min(best_k, n))
    by_recency = list(range(n - 1, n - 1 - last_k, -1))
    by_rank = sorted(range(n), key=lambda i: (rank(rows[i]), -i))[:best_k] if rank else []
    order: list[int] = []
    for pair in itertools.zip_longest(by_rank, by_recency):
        order += [i for i in pair if i is not None]
    chosen: set[int] = set()
    used = 0
    for i in order:
        if i in chosen:
            continue
        cost = counter.count(render(rows[i])) + 1
        if used + cost > budget_tokens:
            break  # rows are about the same size: once one does not fit, stop rather than cherry-pick
        chosen.add(i)
        used += cost
    kept = [rows[i] for i in sorted(chosen)]
    return kept, n - len(kept)
