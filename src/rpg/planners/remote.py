"""The chat base of the planners behind a network service (``openai``, ``ollama``).

What those backends share lives here, so they fail and retry the same way:

* one attempt is :meth:`RemoteChatPlanner._send`; :meth:`RemoteChatPlanner._complete` wraps it
  in :func:`~rpg.planners.transport.call_with_retries`, counts the attempts it really made, and
  strips reasoning blocks from the answer;
* a server that rejects the reply format (:meth:`RemoteChatPlanner._rejects_mode`) is never
  retried: the planner steps down to its next reply mode at once, whatever the HTTP status
  (llama.cpp's server answers HTTP 500 for a ``response_format`` it does not know);
* HTTP failures, timeouts and refused connections get one wording, naming the server;
* :meth:`RemoteChatPlanner.cache_identity` adds the server to the plan cache key.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rpg.errors import ConfigurationError, PlannerError
from rpg.planners.chat import ChatRequest
from rpg.planners.feedback import MultimodalChatPlanner
from rpg.planners.parsing import shorten, strip_reasoning
from rpg.planners.transport import (
    Retry,
    RetryPolicy,
    StructuredOutputUnsupported,
    call_with_retries,
)

__all__ = ["RemoteChatPlanner", "plural", "public_url"]


def public_url(url: str) -> str:
    """``url`` without user name, password, query or fragment (safe for cache keys and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class RemoteChatPlanner(MultimodalChatPlanner):
    """A chat planner whose model is served over the network; see the module docstring.

    Subclasses implement :meth:`_send` (one attempt), :meth:`_transient` (which failures to
    retry), :meth:`_rejects_mode` and :meth:`_failure` (their client's exceptions as planner
    errors), and name their server in :attr:`server` (messages) and :attr:`server_url` (keys).
    """

    def __init__(
        self,
        *,
        timeout: float,
        retry: RetryPolicy | None,
        structured: bool | None,
        validation_retries: int,
    ) -> None:
        super().__init__(structured=structured, validation_retries=validation_retries)
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self.retry = retry or self._default_retry()

    def _default_retry(self) -> RetryPolicy:
        return RetryPolicy()

    @property
    @abstractmethod
    def server(self) -> str:
        """Where requests go, as messages name it."""

    @property
    @abstractmethod
    def server_url(self) -> str:
        """Where requests go, as a URL without credentials (part of the cache key)."""

    def cache_identity(self) -> dict[str, Any]:
        return {**super().cache_identity(), "server": self.server_url}

    # -- what a backend provides

    @abstractmethod
    def _send(self, request: ChatRequest) -> str:
        """One attempt: the reply text, or the client library's exception."""

    @abstractmethod
    def _transient(self, exc: BaseException) -> Retry | None:
        """A :class:`Retry` when ``exc`` is worth another attempt, else ``None``."""

    @abstractmethod
    def _rejects_mode(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the server refusing the requested reply format."""

    def _failure(self, exc: Exception, *, attempts: int) -> Exception | None:
        """The planner error for a final failure of the client (``None``: re-raise it)."""
        return None

    # -- the shared call

    def _complete(self, request: ChatRequest) -> str:
        attempts = 0

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            return self._send(request)

        def classify(exc: BaseException) -> Retry | None:
            if request.structured and self._rejects_mode(exc):
                return None  # a refused format is not transient: step down at once
            return self._transient(exc)

        try:
            text = call_with_retries(
                attempt, policy=self.retry, classify=classify, what=f"{self.planner_id} request"
            )
        except Exception as exc:
            if request.structured and self._rejects_mode(exc):
                raise StructuredOutputUnsupported(shorten(exc)) from None
            failure = self._failure(exc, attempts=attempts)
            if failure is None:
                raise
            raise failure from None
        return strip_reasoning(text)

    # -- shared wording

    def _status_failure(self, status: int, detail: str, *, attempts: int) -> PlannerError:
        """An HTTP failure the backend has no special message for."""
        if status == 429:
            return PlannerError(
                f"{self.server} is rate-limiting requests (HTTP 429) after "
                f"{plural(attempts, 'attempt')}: {detail}; wait and try again"
            )
        if status >= 500:
            return PlannerError(
                f"{self.server} failed (HTTP {status}) {plural(attempts, 'time')}: {detail}"
            )
        return PlannerError(f"{self.server} rejected the request (HTTP {status}): {detail}")

    def _timeout_failure(self, *, attempts: int, hint: str) -> PlannerError:
        return PlannerError(
            f"{self.server} did not answer within {self.timeout:g} s "
            f"({plural(attempts, 'attempt')}); {hint}"
        )


def plural(n: int, noun: str) -> str:
    """``"1 attempt"``, ``"3 attempts"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
