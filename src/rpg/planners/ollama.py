"""The ``ollama`` planner: a model served by a local (or remote) Ollama server.

It talks to ``/api/chat`` through the official ``ollama`` client and passes the plan's JSON
Schema as ``format=``, which Ollama turns into a grammar, so even small local models answer
with a well-formed plan. Retries, validation and reasoning stripping are shared with the other
backends (:mod:`rpg.planners.structured`).

:func:`normalize_host` and :func:`server_answers` need no ``ollama`` package; ``auto`` uses them
to decide whether a server is there.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rpg.errors import ConfigurationError, PlannerError
from rpg.planners.feedback import MultimodalChatPlanner
from rpg.planners.structured import (
    ChatMessage,
    PlannerModelNotFoundError,
    ReplyFormat,
    Retry,
    RetryPolicy,
    StructuredOutputUnsupported,
    b64,
    call_with_retries,
    plan_schema,
    shorten,
    strip_reasoning,
)

if TYPE_CHECKING:
    import ollama as ollama_sdk

__all__ = ["DEFAULT_HOST", "DEFAULT_MODEL", "OllamaPlanner", "normalize_host", "server_answers"]

#: A capable model that fits a laptop; for images use a vision model such as ``qwen2.5vl``.
DEFAULT_MODEL = "qwen2.5:7b"
DEFAULT_HOST = "http://127.0.0.1:11434"
#: The instructions alone are ~2k tokens; Ollama's default context would truncate them.
DEFAULT_NUM_CTX = 8192


def normalize_host(host: str | None = None) -> str:
    """``host``, else ``$OLLAMA_HOST``, else localhost, as a URL with scheme and port.

    Accepts Ollama's own spellings: ``0.0.0.0`` (a bind address, reached as ``127.0.0.1``),
    ``host:port``, or a full URL.
    """
    value = (host or os.environ.get("OLLAMA_HOST") or "").strip()
    if not value:
        return DEFAULT_HOST
    if "://" not in value:
        value = f"http://{value}"
    parts = urlsplit(value)
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = parts.port or (443 if parts.scheme == "https" else 11434)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{hostname}:{port}{path}"


def server_answers(host: str | None = None, *, timeout: float = 0.5) -> bool:
    """Whether an Ollama server answers ``GET /api/version`` at ``host`` within ``timeout``."""
    url = f"{normalize_host(host)}/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class OllamaPlanner(MultimodalChatPlanner):
    """Plans with a model served by Ollama.

    ``host`` defaults to ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``. ``options`` are passed
    to Ollama as-is and override ``temperature``, ``num_predict`` and ``num_ctx``. ``think``
    switches a thinking model's reasoning on or off (the reasoning itself is discarded).
    """

    name = "ollama"

    def __init__(
        self,
        model: str | None = None,
        *,
        host: str | None = None,
        timeout: float = 180.0,
        temperature: float = 0.2,
        num_predict: int = 2048,
        num_ctx: int = DEFAULT_NUM_CTX,
        think: bool | None = None,
        keep_alive: str | float | None = None,
        options: dict[str, Any] | None = None,
        structured: bool | None = None,
        validation_retries: int = 2,
        retry: RetryPolicy | None = None,
        client: ollama_sdk.Client | None = None,
    ) -> None:
        super().__init__(structured=structured, validation_retries=validation_retries)
        self.model = model or DEFAULT_MODEL
        self.host = normalize_host(host)
        self.timeout = timeout
        self.think = think
        self.keep_alive = keep_alive
        self.options: dict[str, Any] = {
            "temperature": temperature,
            "num_predict": num_predict,
            "num_ctx": num_ctx,
            **(options or {}),
        }
        self.retry = retry or RetryPolicy()
        if client is None:
            try:
                import ollama as ollama_sdk
            except ImportError:
                raise ConfigurationError(
                    "the ollama planner needs the 'ollama' package: "
                    "pip install 'rpg-diffusion[ollama]'"
                ) from None
            client = ollama_sdk.Client(host=self.host, timeout=timeout)
        self._client = client

    def __repr__(self) -> str:
        return f"OllamaPlanner(model={self.model!r}, host={self.host!r})"

    @staticmethod
    def _classify(exc: BaseException) -> Retry | None:
        import httpx
        import ollama as ollama_sdk

        if isinstance(exc, ollama_sdk.ResponseError):
            if exc.status_code in (408, 429) or exc.status_code >= 500:
                return Retry()
            return None
        if isinstance(exc, (ConnectionError, httpx.TransportError)):  # refused, reset, timeout
            return Retry()
        return None

    def _complete(
        self,
        messages: list[ChatMessage],
        *,
        structured: bool,
        image_png: bytes | None,
        reply_format: ReplyFormat | None = None,
    ) -> str:
        import httpx
        import ollama as ollama_sdk

        sent: list[dict[str, Any]] = []
        image_done = image_png is None
        for m in messages:
            entry: dict[str, Any] = {"role": m["role"], "content": m["content"]}
            if m["role"] == "user" and not image_done:
                entry["images"] = [b64(image_png or b"")]
                image_done = True
            sent.append(entry)
        kwargs: dict[str, Any] = {"model": self.model, "messages": sent, "options": self.options}
        if structured:
            kwargs["format"] = plan_schema() if reply_format is None else reply_format.schema()
        if self.think is not None:
            kwargs["think"] = self.think
        if self.keep_alive is not None:
            kwargs["keep_alive"] = self.keep_alive
        attempts = self.retry.retries + 1
        try:
            response = call_with_retries(
                lambda: self._client.chat(**kwargs),
                policy=self.retry,
                classify=self._classify,
                what=f"{self.planner_id} request",
            )
        except ollama_sdk.ResponseError as exc:
            raise self._response_error(exc, structured=structured) from None
        except httpx.TimeoutException:
            raise PlannerError(
                f"the Ollama server at {self.host} did not answer within {self.timeout:g} s "
                f"({attempts} attempts); a model may still be loading: raise the timeout"
            ) from None
        except (ConnectionError, httpx.TransportError):
            raise PlannerError(
                f"no Ollama server at {self.host}; start it with `ollama serve`, or point "
                "OLLAMA_HOST (or --host) at a running one"
            ) from None
        # Thinking models return their reasoning in message.thinking; it is not the answer.
        return strip_reasoning(response.message.content or "")

    def _response_error(self, exc: ollama_sdk.ResponseError, *, structured: bool) -> Exception:
        status, detail = exc.status_code, shorten(exc.error)
        if status == 404 and "not found" in detail.lower():
            return PlannerModelNotFoundError(
                f"the Ollama server at {self.host} does not have model {self.model!r}; "
                f"run `ollama pull {self.model}`"
            )
        if status == 400 and structured and any(w in detail.lower() for w in ("format", "schema")):
            return StructuredOutputUnsupported(detail)
        if status >= 500 or status == 429:
            return PlannerError(
                f"the Ollama server at {self.host} failed (HTTP {status}) "
                f"{self.retry.retries + 1} times: {detail}"
            )
        return PlannerError(
            f"the Ollama server at {self.host} rejected the request (HTTP {status}): {detail}"
        )
