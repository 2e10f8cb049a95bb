"""Typed LLM errors: a method catches LLMError and applies its explicit fallback policy."""

from __future__ import annotations


class LLMError(RuntimeError):
    """Base class of every failure of an LLM request or answer."""


class LLMUnavailable(LLMError):
    """The endpoint cannot be reached or does not answer (connection refused, timeout, 5xx) after retries."""


class LLMRequestError(LLMError):
    """The endpoint refused the request (bad model name, bad key, request too large ...): a configuration issue."""


class LLMPromptTooLong(LLMError):
    """A prompt would not fit the context window (context_tokens - max_tokens); nothing was sent."""


class LLMBadAnswer(LLMError):
    """The model answered, but no usable JSON could be read from it, also after a re-ask."""

    def __init__(self, message: str, answers: list[str] | None = None) -> None:
        super().__init__(message)
        self.answers = answers or []
