"""The ``ollama`` planner: a model served by a local (or remote) Ollama server.

It talks to ``/api/chat`` through the official ``ollama`` client and passes the plan's JSON
Schema as ``format=``, which Ollama turns into a grammar, so even small local models answer
with a well-formed plan. Retries, validation and reasoning stripping are shared with the other
backends (:mod:`rpg.planners.remote`, :mod:`rpg.planners.chat`).

:func:`normalize_host` and :func:`server_answers` need no ``ollama`` package; ``auto`` uses them
to decide whether a server is there.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rpg.errors import ConfigurationError, PlannerError
from rpg.planners.chat import ChatRequest, ReplyMode, attach_image, b64
from rpg.planners.parsing import shorten
from rpg.planners.remote import RemoteChatPlanner, public_url
from rpg.planners.schema import plan_schema
from rpg.planners.transport import PlannerModelNotFoundError, Retry, RetryPolicy

if TYPE_CHECKING:
    import ollama as ollama_sdk

__all__ = ["DEFAULT_HOST", "DEFAULT_MODEL", "OllamaPlanner", "normalize_host", "server_answers"]

#: A capable model that fits a laptop; for images use a vision model such as ``qwen2.5vl``.
DEFAULT_MODEL = "qwen2.5:7b"
DEFAULT_HOST = "http://127.0.0.1:11434"
#: The instructions alone are ~2k tokens; Ollama's default context would truncate them.
DEFAULT_NUM_CTX = 8192

# An error that names the request's `format` field is the server refusing that format; a bare
# "schema" is not.
_FORMAT_REJECTED = re.compile(r"\bformat\b|response_format|json_schema", re.IGNORECASE)


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


class OllamaPlanner(RemoteChatPlanner):
    """Plans with a model served by Ollama.

    ``host`` defaults to ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``. ``options`` are passed
    to Ollama as-is and override ``temperature``, ``num_predict`` and ``num_ctx``. ``think``
    switches a thinking model's reasoning on or off (the reasoning itself is discarded).
    A refused connection fails at once (nothing listens: start ``ollama serve``); a busy or
    failing server is retried until ``timeout`` seconds have passed in all, unless ``retry``
    says otherwise.
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
        super().__init__(
            timeout=timeout,
            retry=retry,
            structured=structured,
            validation_retries=validation_retries,
        )
        self.model = model or DEFAULT_MODEL
        self.host = normalize_host(host)
        self.think = think
        self.keep_alive = keep_alive
        self.options: dict[str, Any] = {
            "temperature": temperature,
            "num_predict": num_predict,
            "num_ctx": num_ctx,
            **(options or {}),
        }
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

    @property
    def server(self) -> str:
        return f"the Ollama server at {self.host}"

    @property
    def server_url(self) -> str:
        return public_url(self.host)

    def cache_identity(self) -> dict[str, Any]:
        return {**super().cache_identity(), "options": self.options, "think": self.think}

    def _default_retry(self) -> RetryPolicy:
        # Retries of a busy or failing server stop once `timeout` seconds have passed in all,
        # so one request never waits more than about twice the timeout.
        return RetryPolicy(deadline=self.timeout)

    def _request(self, request: ChatRequest) -> dict[str, Any]:
        sent = attach_image(
            request.messages, request.image_png, lambda m, png: {**m, "images": [b64(png)]}
        )
        kwargs: dict[str, Any] = {"model": self.model, "messages": sent, "options": self.options}
        if request.mode is ReplyMode.SCHEMA:
            fmt = request.reply_format
            kwargs["format"] = plan_schema() if fmt is None else fmt.schema()
        if self.think is not None:
            kwargs["think"] = self.think
        if self.keep_alive is not None:
            kwargs["keep_alive"] = self.keep_alive
        return kwargs

    def _send(self, request: ChatRequest) -> str:
        response = self._client.chat(**self._request(request))
        # Thinking models return their reasoning in message.thinking; it is not the answer.
        return response.message.content or ""

    def _transient(self, exc: BaseException) -> Retry | None:
        import httpx
        import ollama as ollama_sdk

        if isinstance(exc, ollama_sdk.ResponseError):
            if exc.status_code in (408, 429) or exc.status_code >= 500:
                return Retry()
            return None
        if isinstance(exc, ConnectionError):  # refused: nothing listens, waiting will not help
            return None
        if isinstance(exc, httpx.TransportError):  # reset, dropped, timed out
            return Retry()
        return None

    def _rejects_mode(self, exc: BaseException) -> bool:
        import ollama as ollama_sdk

        return isinstance(exc, ollama_sdk.ResponseError) and bool(
            _FORMAT_REJECTED.search(exc.error)
        )

    def _failure(self, exc: Exception, *, attempts: int) -> Exception | None:
        import httpx
        import ollama as ollama_sdk

        if isinstance(exc, ollama_sdk.ResponseError):
            detail = shorten(exc.error)
            if exc.status_code == 404 and "not found" in detail.lower():
                return PlannerModelNotFoundError(
                    f"{self.server} does not have model {self.model!r}; "
                    f"run `ollama pull {self.model}`"
                )
            return self._status_failure(exc.status_code, detail, attempts=attempts)
        if isinstance(exc, httpx.TimeoutException):
            return self._timeout_failure(
                attempts=attempts, hint="a model may still be loading: raise the timeout"
            )
        if isinstance(exc, (ConnectionError, httpx.TransportError)):
            return PlannerError(
                f"no Ollama server at {self.host}; start it with `ollama serve`, or point "
                "OLLAMA_HOST (or --ollama-host) at a running one"
            )
        return None
