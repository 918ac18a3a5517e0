"""Talking to a planner service: bounded retries of transient failures, and the errors.

A backend classifies each failure (:class:`Retry` for "transient, try again", ``None`` for
"final"); :func:`call_with_retries` waits with exponential backoff and jitter, honours a
server's ``retry-after`` (capped), and stops at :attr:`RetryPolicy.retries` extra attempts or at
:attr:`RetryPolicy.deadline` seconds, whichever comes first. The errors below are the ones the
backends turn service failures into.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from rpg.errors import ConfigurationError, ModelNotFoundError, PlannerError

__all__ = [
    "PlannerConfigurationError",
    "PlannerModelNotFoundError",
    "Retry",
    "RetryPolicy",
    "StructuredOutputUnsupported",
    "call_with_retries",
    "parse_retry_after",
]

log = logging.getLogger("rpg.planners")

T = TypeVar("T")


class PlannerConfigurationError(PlannerError, ConfigurationError):
    """The service refused us because of a setting (typically a rejected API key).

    It is a :class:`PlannerError` (the planner contract) and a :class:`ConfigurationError` (what
    the user must fix), so callers can catch either.
    """


class PlannerModelNotFoundError(PlannerError, ModelNotFoundError):
    """The service does not have the requested model (e.g. an Ollama model that is not pulled)."""


class StructuredOutputUnsupported(Exception):
    """Raised by a backend when the server rejects the reply format it was asked for.

    :class:`~rpg.planners.chat.ChatPlanner` catches it, steps down to the backend's next reply
    mode (JSON Schema → JSON mode → the text template) for the rest of the planner's life and
    asks again; it never reaches the caller, and it is never retried as a transport failure.
    """


@dataclass(frozen=True)
class Retry:
    """A backend's verdict that a failure is transient; ``after`` is the server's hint, if any."""

    after: float | None = None


@dataclass
class RetryPolicy:
    """Bounded exponential backoff with jitter, honouring (and capping) ``retry-after``.

    ``retries`` is the number of extra attempts after the first. The n-th wait is drawn from
    ``[d/2, d]`` with ``d = min(max_delay, base_delay * 2**n)`` so clients that failed together
    do not retry together; a server's ``retry-after`` replaces it, capped at ``max_retry_after``.
    ``deadline`` bounds the whole call: no retry starts once that many seconds (counted from the
    first attempt) would have passed by the end of its wait. ``sleep`` and ``clock`` are
    injectable so tests can record waits instead of waiting.
    """

    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    deadline: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        d = min(self.max_delay, self.base_delay * (2**attempt))
        return d / 2 + self.rng.uniform(0, d / 2)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if present."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def call_with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    classify: Callable[[BaseException], Retry | None],
    what: str = "request",
) -> T:
    """Call ``fn``; on a failure ``classify`` calls transient, wait and try again (bounded).

    The last exception propagates unchanged when the retries or the policy's deadline are used
    up, or the failure is not transient, so the backend can turn it into a message about its own
    service.
    """
    attempt = 0
    start = policy.clock()
    while True:
        try:
            return fn()
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None or attempt >= policy.retries:
                raise
            wait = policy.delay(attempt, verdict.after)
            if policy.deadline is not None and policy.clock() - start + wait >= policy.deadline:
                log.info("%s failed (%s); no time left to retry", what, type(exc).__name__)
                raise
            log.warning(
                "%s failed (%s); retry %d of %d in %.2f s",
                what,
                type(exc).__name__,
                attempt + 1,
                policy.retries,
                wait,
            )
            policy.sleep(wait)
            attempt += 1
