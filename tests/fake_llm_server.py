"""A scripted OpenAI-compatible chat server on 127.0.0.1 for deterministic LLM tests (stdlib only).

Each POST /v1/chat/completions takes the next scripted item (or asks `responder`); an item is a dict:
  {"content": "..."}                  one answer (repeated for n > 1 when the server supports n)
  {"choices": ["a", "b"]}             explicit answers
  {"content": "", "reasoning": "..."} an empty content with a reasoning field
  {"status": 500, "error": "boom"}    an HTTP error
  {"sleep": 2.0, ...}                 delay before answering (to provoke client timeouts)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Item = dict[str, Any]


class FakeLLMServer:
    def __init__(
        self,
        script: list[Item] | None = None,
        responder: Callable[[dict[str, Any]], Item] | None = None,
        *,
        model: str = "fake-model",
        supports_n: bool = True,
        reject_json_schema: bool = False,
    ) -> None:
        self.script: deque[Item] = deque(script or [])
        self.responder = responder
        self.model = model
        self.supports_n = supports_n
        self.reject_json_schema = reject_json_schema  # answer {"type": "json_schema"} like llama-cpp-python does
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *items: Item) -> None:
        with self.lock:
            self.script.extend(items)

    def chat_requests(self, purpose: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")
                and (purpose is None or r["purpose"] == purpose)]

    def start(self) -> FakeLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                record = {"path": self.path, "body": body, "purpose": self.headers.get("X-Centaur-Purpose")}
                with server.lock:
                    server.requests.append(record)
                    item = server.script.popleft() if server.script else None
                fmt = body.get("response_format") or {}
                if server.reject_json_schema and fmt.get("type") == "json_schema":
                    with server.lock:  # the scripted item is for the real request that follows
                        if item is not None:
                            server.script.appendleft(item)
                    self._send(500, {"error": {"message": "Input should be 'text' or 'json_object' "
                                                          "(body.response_format.type)", "type": "internal"}})
                    return
                if item is None:
                    item = server.responder(body) if server.responder else {"content": "{}"}
                if item.get("sleep"):
                    time.sleep(item["sleep"])
                if item.get("status", 200) != 200:
                    self._send(item["status"], {"error": {"message": item.get("error", "error")}})
                    return
                n = int(body.get("n") or 1)
                if "choices" in item:
                    texts = list(item["choices"])
                else:
                    texts = [item.get("content", "")] * (n if server.supports_n else 1)
                if not server.supports_n:
                    texts = texts[:1]
                prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
                choices = []
                for i, text in enumerate(texts):
                    message: dict[str, Any] = {"role": "assistant", "content": text}
                    if "reasoning" in item:
                        message["reasoning_content"] = item["reasoning"]
                    choices.append({"index": i, "message": message, "finish_reason": "stop"})
                self._send(200, {
                    "id": "fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", server.model), "choices": choices,
                    "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": sum(len(t) for t in texts) // 4,
                              "total_tokens": 0},
                })

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
