"""Loopback HTTP servers that speak just enough of the OpenAI and Ollama protocols for tests.

Each server listens on ``127.0.0.1`` on a free port, in a daemon thread, and answers from a
script: a queue of :class:`Reply` objects (status, headers, body, delay) consumed one per
request. Every request is recorded (:class:`Recorded`) so a test can assert what the real client
library sent: the model, the messages, the JSON Schema, an image. When the queue is empty a
request gets HTTP 599 with a body saying so, which makes an unexpected extra call visible.

Use as a context manager::

    with OpenAIServer() as server:
        server.push(server.chat("{...}"))
        planner = OpenAIPlanner(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from typing_extensions import Self

__all__ = [
    "LlamaCppServer",
    "LoopbackServer",
    "OllamaServer",
    "OpenAIServer",
    "Recorded",
    "Reply",
]


@dataclass
class Reply:
    """One scripted answer. ``body`` may be bytes, text, or JSON-serialisable data."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (to provoke client timeouts).
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass
class Recorded:
    """A request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class LoopbackServer:
    """A scripted HTTP server on 127.0.0.1; subclasses add protocol-shaped reply builders.

    ``routes`` maps ``"METHOD /path"`` to a fixed reply that is not taken from the queue (for
    health checks such as Ollama's ``GET /api/version``).
    """

    def __init__(self, routes: dict[str, Reply] | None = None) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.routes: dict[str, Reply] = dict(routes or {})
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- scripting

    def push(self, *replies: Reply) -> Self:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            self.replies.extend(replies)
        return self

    def extend(self, replies: Iterable[Reply]) -> Self:
        return self.push(*replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet consumed."""
        with self._lock:
            return len(self.replies)

    def requests_to(self, path: str) -> list[Recorded]:
        """The recorded requests whose path is ``path``."""
        return [r for r in self.requests if r.path == path]

    # -- lifecycle

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are sleeping out a delay
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving

    def _refuse(self, request: Recorded) -> Reply | None:
        """A reply that answers ``request`` without taking one from the queue (subclasses)."""
        return None

    def _next_reply(self, method: str, path: str) -> Reply:
        fixed = self.routes.get(f"{method} {path}")
        if fixed is not None:
            return fixed
        with self._lock:
            if self.replies:
                return self.replies.popleft()
        return Reply(599, {"error": f"no scripted reply left for {method} {path}"})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                recorded = Recorded(
                    self.command, path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with server._lock:
                    server.requests.append(recorded)
                reply = server._refuse(recorded) or server._next_reply(self.command, path)
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                data, ctype = reply.encoded()
                try:
                    self.send_response(reply.status)
                    headers = {
                        "content-type": ctype,
                        **{k.lower(): v for k, v in reply.headers.items()},
                    }
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            do_GET = _serve
            do_POST = _serve
            do_HEAD = _serve

        return Handler


class OpenAIServer(LoopbackServer):
    """Speaks ``POST /v1/chat/completions`` as the OpenAI API and compatible servers do."""

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` to the ``openai`` client."""
        return f"{self.url}/v1"

    @property
    def chat_requests(self) -> list[Recorded]:
        return self.requests_to("/v1/chat/completions")

    @staticmethod
    def chat(
        content: str | None,
        *,
        reasoning_content: str | None = None,
        model: str = "test-model",
        finish_reason: str = "stop",
        delay: float = 0.0,
    ) -> Reply:
        """A successful chat completion whose one choice says ``content``."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning_content is not None:
            message["reasoning_content"] = reasoning_content
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
        return Reply(200, body, delay=delay)

    @staticmethod
    def error(
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """An error in OpenAI's ``{"error": {...}}`` shape."""
        body = {"error": {"message": message, "type": type, "code": code, "param": param}}
        return Reply(status, body, headers=dict(headers or {}))


class OllamaServer(LoopbackServer):
    """Speaks Ollama's ``POST /api/chat`` (non-streaming) and answers ``GET /api/version``."""

    def __init__(self, routes: dict[str, Reply] | None = None) -> None:
        base = {
            "GET /api/version": Reply(200, {"version": "0.0.0-test"}),
            "GET /": Reply(200, "Ollama is running"),
        }
        super().__init__({**base, **(routes or {})})

    @property
    def host(self) -> str:
        """What to pass as ``host`` to ``ollama.Client``."""
        return self.url

    @property
    def chat_requests(self) -> list[Recorded]:
        return self.requests_to("/api/chat")

    @staticmethod
    def chat(
        content: str, *, thinking: str | None = None, model: str = "test-model", delay: float = 0.0
    ) -> Reply:
        """A finished, non-streamed ``/api/chat`` answer."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking is not None:
            message["thinking"] = thinking
        body = {
            "model": model,
            "created_at": "2024-01-01T00:00:00Z",
            "message": message,
            "done": True,
            "done_reason": "stop",
            "total_duration": 1,
            "eval_count": 10,
        }
        return Reply(200, body, delay=delay)

    @staticmethod
    def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> Reply:
        """An error in Ollama's ``{"error": "..."}`` shape."""
        return Reply(status, {"error": message}, headers=dict(headers or {}))


class LlamaCppServer(OpenAIServer):
    """An OpenAI-compatible server that refuses ``response_format`` the way llama.cpp's does.

    It takes ``{"type": "text"}`` and ``{"type": "json_object"}`` (optionally with a
    ``"schema"``, llama.cpp's extension; refused too when ``schema_in_json_object`` is false) and
    answers anything else with HTTP 500 and an error body, as llama.cpp's ``llama-server``
    (``flavor="cpp"``) or the pydantic-validated Python server (``flavor="python"``) do. Refusals
    do not consume a scripted reply.
    """

    def __init__(self, *, flavor: str = "cpp", schema_in_json_object: bool = True) -> None:
        super().__init__()
        self.flavor = flavor
        self.schema_in_json_object = schema_in_json_object

    def _refuse(self, request: Recorded) -> Reply | None:
        if request.path != "/v1/chat/completions" or not request.body:
            return None
        fmt = request.json.get("response_format")
        if fmt is None:
            return None
        kind = fmt.get("type")
        if kind in ("text", "json_object") and ("schema" not in fmt or self.schema_in_json_object):
            return None
        if kind not in ("text", "json_object"):
            if self.flavor == "cpp":
                message = (
                    f'response_format type must be one of "text" or "json_object", but got: {kind}'
                )
            else:
                message = (
                    "1 validation error for CreateChatCompletionRequest\n"
                    "response_format.type\n  Input should be 'text' or 'json_object' "
                    f"[type=literal_error, input_value='{kind}', input_type=str]"
                )
        else:
            message = "response_format: unexpected key 'schema'"
        return Reply(500, {"error": {"code": 500, "message": message, "type": "server_error"}})
