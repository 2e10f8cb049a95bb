"""A chat client over the openai SDK: constrained JSON when the server has it, typed errors, call logs.

Every request is logged (messages, answers, latency, tokens, model, purpose, error) to a JSONL file
and kept in memory; `LLMClient.track()` collects the calls made for one trial so a sampler can
write a summary into that trial.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import jsonschema
import openai

from centaur.llm.errors import LLMBadAnswer, LLMError, LLMPromptTooLong, LLMRequestError, LLMUnavailable
from centaur.llm.extract import extract_json
from centaur.llm.settings import LLMSettings, resolve_settings
from centaur.llm.tokens import TokenCounter

if TYPE_CHECKING:
    from centaur.llm.local import LocalServer

T = TypeVar("T")
Message = dict[str, str]

# response_format variants, most specific first. "json_schema" is the OpenAI form (vLLM, Ollama,
# llama.cpp's own server, hosted APIs); "json_object" + "schema" is what llama-cpp-python's server
# accepts (it answers the OpenAI form with a validation error, as HTTP 500).
FORMAT_MODES = ("json_schema", "json_object", "none")
PURPOSE_HEADER = "X-Centaur-Purpose"


@dataclass
class LLMCall:
    """One HTTP request to the endpoint, as logged."""

    purpose: str
    model: str
    messages: list[Message]
    answers: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    n: int = 1
    response_format: str = "none"
    error: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)  # e.g. {"trial": 12, "method": "llambo"}
    time: float = field(default_factory=time.time)


def _seconds(calls: Sequence[LLMCall]) -> float:
    return sum(c.latency_s for c in calls)


def _prompt_tokens(calls: Sequence[LLMCall]) -> int:
    return sum(c.prompt_tokens or 0 for c in calls)


def _completion_tokens(calls: Sequence[LLMCall]) -> int:
    return sum(c.completion_tokens or 0 for c in calls)


@dataclass
class LLMReply:
    """The completions of one logical request (possibly several HTTP calls when the server ignores `n`)."""

    texts: list[str]
    calls: list[LLMCall]

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def latency_s(self) -> float:
        return _seconds(self.calls)

    @property
    def prompt_tokens(self) -> int:
        return _prompt_tokens(self.calls)

    @property
    def completion_tokens(self) -> int:
        return _completion_tokens(self.calls)

    def objects(self) -> list[dict[str, Any] | None]:
        return [extract_json(t) for t in self.texts]


@dataclass
class CallTracker:
    """The calls made in one `track()` block (this thread only)."""

    labels: dict[str, Any]
    calls: list[LLMCall] = field(default_factory=list)

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    @property
    def seconds(self) -> float:
        return _seconds(self.calls)

    @property
    def prompt_tokens(self) -> int:
        return _prompt_tokens(self.calls)

    @property
    def completion_tokens(self) -> int:
        return _completion_tokens(self.calls)

    @property
    def max_prompt_tokens(self) -> int:
        return max((c.prompt_tokens or 0 for c in self.calls), default=0)


@dataclass
class JSONAnswer:
    """What `ask_json` accepted: the checked value, the raw object and the notes of the attempts."""

    value: Any
    raw: dict[str, Any]
    text: str
    reasked: bool
    problems: list[str]


class LLMClient:
    """Chat completions against an OpenAI-compatible endpoint (or the bundled local server).

    Thread-safe; the connection (and the local server, if any) is set up on the first request.
    """

    def __init__(
        self,
        settings: LLMSettings | None = None,
        *,
        log_path: Path | str | None = None,
        server: LocalServer | None = None,
        keep_calls: int = 2000,
    ) -> None:
        self.settings = settings if settings is not None else resolve_settings()
        self.log_path = Path(log_path) if log_path else None
        self.calls: deque[LLMCall] = deque(maxlen=keep_calls)  # full records are in the JSONL log
        self.counter = TokenCounter()
        self._server = server
        self._owns_server = False
        self._sdk: openai.OpenAI | None = None
        self._model: str | None = self.settings.model
        self._format_mode = "json_schema" if self.settings.json_schema else "none"
        self._supports_n: bool | None = None
        self._down = False  # the last request failed as unavailable: retry nothing until it answers again
        self._lock = threading.RLock()
        self._log_lock = threading.Lock()
        self._local = threading.local()

    # -- connection ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str | None:
        if self.settings.base_url:
            return self.settings.base_url
        return self._server.base_url if self._server is not None else None

    @property
    def model(self) -> str:
        self._connect()  # returns only once the model is known (raises LLMError otherwise)
        if self._model is None:  # pragma: no cover - _connect guarantees it
            raise LLMRequestError(f"no model known for {self.base_url}; set llm.model / CENTAUR_LLM_MODEL")
        return self._model

    @property
    def endpoint_down(self) -> bool:
        """Whether the last request found the endpoint unavailable (then the next requests get one attempt
        each, without the SDK's retries, until the endpoint answers again)."""
        return self._down

    @property
    def supports_n(self) -> bool | None:
        """Whether the server returns `n` completions per request (None: not known yet)."""
        return self._supports_n

    @property
    def format_mode(self) -> str:
        return self._format_mode

    @property
    def timeout_s(self) -> float:
        return self.settings.request_timeout_s(local=self.settings.base_url is None)

    def _connect(self) -> openai.OpenAI:
        """The SDK client, once the endpoint's model is known. Two steps, each redone until it succeeds:
        the HTTP client (and the local server), then the model name (listed when not configured). A
        request that finds the endpoint down lists the models again the next time, instead of going on
        with a connection that has no model."""
        with self._lock:
            if self._server is not None and not self._server.running:
                self._server.start()  # first use, or it died (its log tells why; start() raises if it cannot)
                self._sdk = None
            if self._sdk is None:
                self._sdk = self._new_sdk()
            if self._model is None:
                self._model = self._first_model(self._sdk, self.base_url or "(local server)")
            return self._sdk

    def _new_sdk(self) -> openai.OpenAI:
        base_url = self.settings.base_url
        if base_url is None:
            from centaur.llm.local import LocalServer

            if self._server is None:
                self._server = LocalServer.from_settings(self.settings, log_dir=self._log_dir())
                self._owns_server = True
            self._server.start()
            base_url = self._server.base_url
        if self._server is not None and self._server.kind == "llama-cpp-python":
            # Known server: skip probing the OpenAI json_schema form it answers with HTTP 500.
            if self._format_mode == "json_schema":
                self._format_mode = "json_object"
            self._supports_n = False  # it ignores n
        return openai.OpenAI(
            base_url=base_url,
            api_key=self.settings.api_key or "not-needed",
            timeout=self.timeout_s,
            max_retries=self.settings.max_retries,
        )

    def _first_model(self, sdk: openai.OpenAI, base_url: str) -> str:
        if self._server is not None:
            return self._server.alias
        attempts = self._attempts()
        call = LLMCall(purpose="list-models", model="?", messages=[])
        start = time.perf_counter()
        try:
            models = [m.id for m in self._retrying(sdk).models.list()]
        except openai.APIConnectionError as e:  # also a timeout (APITimeoutError)
            call.latency_s = time.perf_counter() - start
            call.error = f"connection error: {e}"
            self._record(call)
            self._down = True
            what = f"no answer within {self.timeout_s:g}s" if isinstance(e, openai.APITimeoutError) else (
                f"{e.__cause__ or e}")
            raise LLMUnavailable(
                f"cannot reach the LLM endpoint {base_url} ({attempts} attempt{'s' if attempts > 1 else ''}): "
                f"{what}; start the server, or set llm.base_url / CENTAUR_LLM_BASE_URL to one that runs"
            ) from e
        except openai.APIStatusError as e:
            call.latency_s = time.perf_counter() - start
            call.error = f"HTTP {e.status_code}: {_short(e)}"
            self._record(call)
            if _unavailable_status(e.status_code):
                self._down = True
                raise LLMUnavailable(
                    f"{base_url}/models: HTTP {e.status_code} after {attempts} attempt(s): {_short(e)}"
                ) from e
            self._down = False
            raise LLMRequestError(
                f"{base_url}/models failed (HTTP {e.status_code}); set llm.model / CENTAUR_LLM_MODEL explicitly"
            ) from e
        self._down = False
        if not models:
            raise LLMRequestError(f"{base_url} lists no models; set llm.model / CENTAUR_LLM_MODEL")
        return models[0]

    def _attempts(self) -> int:
        """HTTP attempts the next request gets: 1 while the endpoint is known to be down."""
        return 1 if self._down else self.settings.max_retries + 1

    def _retrying(self, sdk: openai.OpenAI) -> openai.OpenAI:
        """The SDK client for the next request. While the endpoint is down (the last request failed as
        unavailable after its retries) each request gets a single attempt: a dead endpoint is then noticed
        in one connection or timeout per trial, not in the SDK's full retry cycle every time."""
        return sdk.with_options(max_retries=0) if self._down else sdk

    def _log_dir(self) -> Path | None:
        return self.log_path.parent if self.log_path else None

    def close(self) -> None:
        """Close the HTTP client and stop a local server this client started."""
        with self._lock:
            if self._sdk is not None:
                self._sdk.close()
                self._sdk = None
            if self._server is not None and self._owns_server:
                self._server.stop()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tracking --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def track(self, **labels: Any) -> Iterator[CallTracker]:
        """Collect the calls this thread makes inside the block; `labels` go into every call's log record."""
        tracker = CallTracker(labels=labels)
        stack = self._trackers()
        stack.append(tracker)
        try:
            yield tracker
        finally:
            stack.remove(tracker)

    def _trackers(self) -> list[CallTracker]:
        if not hasattr(self._local, "trackers"):
            self._local.trackers = []
        return self._local.trackers

    def _record(self, call: LLMCall) -> None:
        for tracker in self._trackers():
            call.labels = {**tracker.labels, **call.labels}
            tracker.calls.append(call)
        self.calls.append(call)
        if self.log_path is not None:
            line = json.dumps(asdict(call), default=str)
            with self._log_lock:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")

    # -- requests --------------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Message],
        *,
        schema: dict[str, Any] | None = None,
        n: int = 1,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        purpose: str = "chat",
    ) -> LLMReply:
        """`n` completions of `messages`. With `schema`, constrained decoding is requested where the
        server supports it (detected once, then remembered). Raises LLMUnavailable, LLMRequestError
        or LLMPromptTooLong."""
        messages = [dict(m) for m in messages]
        max_tokens = max_tokens or self.settings.max_tokens
        estimate = self.counter.count_messages(messages)
        limit = self.settings.context_tokens - max_tokens
        if estimate > limit:
            error = LLMPromptTooLong(
                f"{purpose}: prompt of about {estimate} tokens exceeds the budget of {limit} "
                f"(context_tokens {self.settings.context_tokens} - max_tokens {max_tokens})"
            )
            self._record(LLMCall(purpose=purpose, model=self._model or "?", messages=messages, error=str(error)))
            raise error
        texts: list[str] = []
        calls: list[LLMCall] = []
        while len(texts) < n:
            want = n - len(texts) if self._supports_n is not False else 1
            call_seed = None if seed is None else seed + len(texts)  # repeated calls must not repeat the sample
            call = self._one_call(messages, schema, want, temperature, top_p, max_tokens, call_seed, purpose)
            calls.append(call)
            texts += call.answers
            if want > 1 and self._supports_n is None:
                self._supports_n = len(call.answers) >= want
            if not call.answers:
                break  # the server answered with no choices at all: don't loop forever
        return LLMReply(texts=texts[:n], calls=calls)

    def _one_call(
        self,
        messages: list[Message],
        schema: dict[str, Any] | None,
        n: int,
        temperature: float | None,
        top_p: float | None,
        max_tokens: int,
        seed: int | None,
        purpose: str,
    ) -> LLMCall:
        sdk = self._connect()
        mode = self._format_mode if schema is not None else "none"
        call = LLMCall(purpose=purpose, model=self.model, messages=messages, n=n, response_format=mode)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.settings.temperature if temperature is None else temperature,
            "max_tokens": max_tokens,
            "extra_headers": {PURPOSE_HEADER: purpose},
        }
        if n > 1:
            kwargs["n"] = n
        if top_p is not None:
            kwargs["top_p"] = top_p
        if seed is not None:
            kwargs["seed"] = seed
        if self.settings.extra_body:
            kwargs["extra_body"] = self.settings.extra_body
        if mode != "none" and schema is not None:
            kwargs["response_format"] = _response_format(mode, schema)
        attempts = self._attempts()
        start = time.perf_counter()
        try:
            response = self._retrying(sdk).chat.completions.create(**kwargs)
        except openai.APIStatusError as e:
            call.latency_s = time.perf_counter() - start
            call.error = f"HTTP {e.status_code}: {_short(e)}"
            self._record(call)
            if mode != "none" and _rejects_format(e):  # the server answered: it may refuse only the format
                next_mode = FORMAT_MODES[FORMAT_MODES.index(mode) + 1]
                try:
                    retry = self._one_call_mode(next_mode, messages, schema, n, temperature, top_p, max_tokens,
                                                seed, purpose)
                except LLMRequestError:
                    self._down = _unavailable_status(e.status_code)
                    raise self._status_error(e, attempts) from e  # not the format's fault: report the first
                return retry
            self._down = _unavailable_status(e.status_code)
            raise self._status_error(e, attempts) from e
        except openai.APITimeoutError as e:
            call.latency_s = time.perf_counter() - start
            call.error = f"timeout after {attempts} attempt(s)"
            self._record(call)
            self._down = True
            raise LLMUnavailable(
                f"{purpose}: {self.base_url} gave no answer within {self.timeout_s:g}s "
                f"({attempts} attempt{'s' if attempts > 1 else ''}); raise llm.timeout_s or check the server"
            ) from e
        except openai.APIConnectionError as e:
            call.latency_s = time.perf_counter() - start
            call.error = f"connection error: {e}"
            self._record(call)
            self._down = True
            raise LLMUnavailable(
                f"{purpose}: cannot connect to {self.base_url} ({attempts} attempt{'s' if attempts > 1 else ''}): "
                f"{e.__cause__ or e}{self._server_hint()}"
            ) from e
        self._down = False
        call.latency_s = time.perf_counter() - start
        if response.usage is not None:
            call.prompt_tokens = response.usage.prompt_tokens
            call.completion_tokens = response.usage.completion_tokens
        for choice in response.choices or []:
            text, reasoning = _choice_text(choice)
            call.answers.append(text)
            if reasoning:
                call.reasoning.append(reasoning)
        self._record(call)
        self.counter.observe(messages, call.prompt_tokens)
        return call

    def _one_call_mode(self, mode: str, *args: Any) -> LLMCall:
        """A call with a downgraded response_format; remembered when the server accepts it."""
        previous = self._format_mode
        self._format_mode = mode
        try:
            call = self._one_call(*args)
        except LLMError:
            self._format_mode = previous
            raise
        return call

    def _status_error(self, e: openai.APIStatusError, attempts: int) -> LLMError:
        where = f"{self.base_url} (model {self._model})"
        if _unavailable_status(e.status_code):
            return LLMUnavailable(
                f"{where}: HTTP {e.status_code} after {attempts} attempt{'s' if attempts > 1 else ''}: {_short(e)}"
                f"{self._server_hint()}"
            )
        return LLMRequestError(f"{where}: HTTP {e.status_code}: {_short(e)}")

    def _server_hint(self) -> str:
        if self._server is None:
            return ""
        death = self._server.death_note()
        death = f"\n{death}" if death else ""
        return f"{death}\nlocal server log ({self._server.log_path}):\n{self._server.log_tail()}"

    def ask_json(
        self,
        messages: Sequence[Message],
        *,
        accept: Callable[[dict[str, Any]], T] | None = None,
        schema: dict[str, Any] | None = None,
        purpose: str = "json",
        temperature: float | None = None,
        seed: int | None = None,
        reask: bool = True,
        reask_hint: str = "",
    ) -> JSONAnswer:
        """Ask for one JSON object and check it with `accept` (raise ValueError to reject; by default the
        object is validated against `schema` with jsonschema). A reply with no usable object is
        answered once with the reason and asked again. Raises LLMBadAnswer after that."""
        accept = accept or _schema_check(schema)
        history = [dict(m) for m in messages]
        problems: list[str] = []
        texts: list[str] = []
        for attempt in range(2 if reask else 1):
            reply = self.chat(history, schema=schema, temperature=temperature, purpose=purpose if attempt == 0
                              else f"{purpose}:reask", seed=None if seed is None else seed + 1000 * attempt)
            text = reply.text
            texts.append(text)
            obj = extract_json(text)
            if obj is None:
                problem = "no JSON object found in the reply" if text.strip() else "the reply was empty"
            else:
                try:
                    return JSONAnswer(value=accept(obj), raw=obj, text=text, reasked=attempt > 0, problems=problems)
                except (ValueError, jsonschema.ValidationError) as e:
                    problem = _short_message(e)
            problems.append(problem)
            history = history + [
                {"role": "assistant", "content": text[:2000]},
                {"role": "user", "content": f"That reply could not be used: {problem}. {reask_hint}".strip()
                 + "\nAnswer again with only the JSON object, no other text."},
            ]
        raise LLMBadAnswer(f"{purpose}: no usable answer after {len(texts)} attempt(s): {'; '.join(problems)}",
                           answers=texts)


def _response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any]:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": False}}
    return {"type": "json_object", "schema": schema}


def _unavailable_status(status: int) -> bool:
    """HTTP statuses that mean the endpoint cannot serve now (overloaded, down behind a proxy), not a bad request."""
    return status >= 500 or status in (408, 429)


def _rejects_format(e: openai.APIStatusError) -> bool:
    """Whether an error may be the server refusing our response_format (then we try the next form)."""
    if e.status_code in (400, 422):
        return True
    text = _short(e, 2000).lower()
    return e.status_code == 500 and ("response_format" in text or "json_schema" in text)


def _choice_text(choice: Any) -> tuple[str, str]:
    """(answer text, reasoning text). Reasoning models may leave `content` empty and put the answer in
    a `reasoning` / `reasoning_content` field; then that text is the answer."""
    message = choice.message
    content = message.content or ""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = getattr(message, "reasoning_content", None) or extra.get("reasoning_content") or extra.get(
        "reasoning") or ""
    if not isinstance(reasoning, str):
        reasoning = json.dumps(reasoning, default=str)
    if not content.strip() and reasoning:
        return reasoning, reasoning
    return content, reasoning


def _schema_check(schema: dict[str, Any] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def check(obj: dict[str, Any]) -> dict[str, Any]:
        if schema is not None:
            jsonschema.validate(obj, schema)
        return obj

    return check


def _short(e: openai.APIStatusError, limit: int = 300) -> str:
    body = e.body if isinstance(e.body, (dict, str)) else None
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    text = str(body if body else e.message)
    return text if len(text) <= limit else text[:limit] + "..."


def _short_message(e: Exception) -> str:
    if isinstance(e, jsonschema.ValidationError):
        path = "/".join(str(p) for p in e.absolute_path)
        return f"{path + ': ' if path else ''}{e.message}"
    return str(e)
