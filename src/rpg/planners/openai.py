"""The ``openai`` planner: any OpenAI-compatible chat-completions server.

That covers the OpenAI API itself and the local servers that copy it (vLLM, llama.cpp's
``llama-server``, LM Studio, DeepSeek, ...), through the official ``openai`` client. The plan is
requested as structured output (``response_format`` with the plan's JSON Schema); a server that
rejects that gets the RPG text template instead, for the rest of the planner's life.

The client library's own retries are switched off (``max_retries=0``): retries, backoff and
``retry-after`` handling are :func:`rpg.planners.structured.call_with_retries`, the same for
every backend and testable. The API key is handed to the client and kept nowhere else; it never
appears in a message, a log line, a cache file or a plan.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError, PlannerError
from rpg.planners.feedback import MultimodalChatPlanner
from rpg.planners.structured import (
    SCHEMA_NAME,
    ChatMessage,
    PlannerConfigurationError,
    PlannerModelNotFoundError,
    ReplyFormat,
    Retry,
    RetryPolicy,
    StructuredOutputUnsupported,
    b64,
    call_with_retries,
    parse_retry_after,
    plan_schema,
    shorten,
    strip_reasoning,
)

if TYPE_CHECKING:
    import openai as openai_sdk

__all__ = ["DEFAULT_MODEL", "OpenAIPlanner", "is_reasoning_model"]

#: The model used when none is given: cheap, fast, supports strict structured output and images.
DEFAULT_MODEL = "gpt-4o-mini"

#: Key sent to a custom ``base_url`` when no key is set: local servers usually ignore the key
#: but the client refuses to start without one.
PLACEHOLDER_KEY = "sk-no-key-required"

# OpenAI's reasoning families take max_completion_tokens, no temperature, and a developer message.
_REASONING = re.compile(r"^(o\d+|gpt-5)([-.:_].*)?$", re.IGNORECASE)
# Errors of a server that does not do structured output mention one of these.
_STRUCTURED_HINT = re.compile(r"response_format|json_schema|structured|schema|grammar", re.I)


def is_reasoning_model(model: str) -> bool:
    """True for OpenAI reasoning model names (``o1``, ``o3-mini``, ``o4-mini``, ``gpt-5``, ...)."""
    return bool(_REASONING.match(model.rsplit("/", 1)[-1]))


class OpenAIPlanner(MultimodalChatPlanner):
    """Plans with a chat model behind an OpenAI-compatible API.

    ``api_key`` defaults to ``$OPENAI_API_KEY`` and ``base_url`` to ``$OPENAI_BASE_URL`` (else the
    OpenAI API). With a custom ``base_url`` and no key, a placeholder key is sent, because most
    local servers accept any key. ``reasoning`` forces (or disables) the parameter set of
    reasoning models; by default it follows the model name. ``strict`` asks for OpenAI's strict
    schema adherence. ``retry`` controls transport retries; ``validation_retries`` how many times
    an unusable reply is sent back to the model with the error.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        temperature: float = 0.2,
        max_tokens: int = 2048,
        reasoning: bool | None = None,
        reasoning_effort: str | None = None,
        structured: bool | None = None,
        strict: bool = True,
        validation_retries: int = 2,
        retry: RetryPolicy | None = None,
        client: openai_sdk.OpenAI | None = None,
    ) -> None:
        super().__init__(structured=structured, validation_retries=validation_retries)
        self.model = model or DEFAULT_MODEL
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.reasoning = is_reasoning_model(self.model) if reasoning is None else reasoning
        self.reasoning_effort = reasoning_effort
        self.strict = strict
        self.retry = retry or RetryPolicy()
        self._placeholder_key = False
        if client is None:
            client = self._make_client(api_key)
        self._client = client

    def _make_client(self, api_key: str | None) -> openai_sdk.OpenAI:
        # The key first: importing the client takes seconds, a missing key should not.
        key = api_key if api_key else os.environ.get("OPENAI_API_KEY") or None
        if key is None:
            if self.base_url is None:
                raise ConfigurationError(
                    "the openai planner needs an API key: set OPENAI_API_KEY (or pass api_key=); "
                    "for a local OpenAI-compatible server give --base-url URL instead"
                )
            key, self._placeholder_key = PLACEHOLDER_KEY, True
        try:
            import openai as openai_sdk
        except ImportError:
            raise ConfigurationError(
                "the openai planner needs the 'openai' package: pip install 'rpg-diffusion[openai]'"
            ) from None
        return openai_sdk.OpenAI(
            api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0
        )

    def __repr__(self) -> str:  # never shows the key
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"OpenAIPlanner(model={self.model!r}{where})"

    @property
    def server(self) -> str:
        """Where requests go, for messages."""
        return self.base_url or "the OpenAI API"

    # -- the request

    def _request(
        self,
        messages: list[ChatMessage],
        *,
        structured: bool,
        image_png: bytes | None,
        reply_format: ReplyFormat | None = None,
    ) -> dict[str, Any]:
        sent: list[dict[str, Any]] = []
        image_done = image_png is None
        for m in messages:
            role = m["role"]
            if role == "system" and self.reasoning:
                role = "developer"
            content: Any = m["content"]
            if role == "user" and not image_done:
                content = [
                    {"type": "text", "text": m["content"]},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{b64(image_png or b'')}"},
                    },
                ]
                image_done = True
            sent.append({"role": role, "content": content})
        kwargs: dict[str, Any] = {"model": self.model, "messages": sent}
        if self.reasoning:
            kwargs["max_completion_tokens"] = self.max_tokens
            if self.reasoning_effort:
                kwargs["reasoning_effort"] = self.reasoning_effort
        else:
            kwargs["max_tokens"] = self.max_tokens
            kwargs["temperature"] = self.temperature
        if structured:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": SCHEMA_NAME if reply_format is None else reply_format.name,
                    "schema": plan_schema(strict=self.strict)
                    if reply_format is None
                    else reply_format.schema(strict=self.strict),
                    "strict": self.strict,
                },
            }
        return kwargs

    @staticmethod
    def _classify(exc: BaseException) -> Retry | None:
        import openai as openai_sdk

        if isinstance(exc, openai_sdk.APIStatusError):
            if exc.status_code == 429 and exc.code == "insufficient_quota":
                return None  # waiting does not add credit
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                return Retry(parse_retry_after(exc.response.headers))
            return None
        if isinstance(exc, openai_sdk.APIConnectionError):  # includes timeouts
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
        import openai as openai_sdk

        kwargs = self._request(
            messages, structured=structured, image_png=image_png, reply_format=reply_format
        )
        try:
            completion = call_with_retries(
                lambda: self._client.chat.completions.create(**kwargs),
                policy=self.retry,
                classify=self._classify,
                what=f"{self.planner_id} request",
            )
        except openai_sdk.APIStatusError as exc:
            raise self._status_error(exc, structured=structured) from None
        except openai_sdk.APITimeoutError:
            raise PlannerError(
                f"{self.server} did not answer within {self.timeout:g} s "
                f"({self.retry.retries + 1} attempts); raise the timeout or check the server"
            ) from None
        except openai_sdk.APIConnectionError as exc:
            hint = (
                "check --base-url and that the server is running"
                if self.base_url
                else ("check the network connection, or pass --base-url for a local server")
            )
            raise PlannerError(
                f"could not connect to {self.server} ({self.retry.retries + 1} attempts): "
                f"{shorten(str(exc.__cause__ or exc))}; {hint}"
            ) from None

        if not completion.choices:
            raise PlannerError(f"{self.server} returned no choices for model {self.model!r}")
        choice = completion.choices[0]
        message = choice.message
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise PlannerError(f"{self.model} refused to plan: {shorten(refusal)}", raw=refusal)
        if not message.content and choice.finish_reason == "length":
            raise PlannerError(
                f"{self.model} used all {self.max_tokens} tokens without answering (reasoning "
                "models think before they answer); raise max_tokens"
            )
        # DeepSeek-style servers put the chain of thought in `reasoning_content`; it is never
        # part of the answer, so it is ignored here, and <think> blocks are stripped.
        return strip_reasoning(message.content or "")

    def _status_error(self, exc: openai_sdk.APIStatusError, *, structured: bool) -> Exception:
        status = exc.status_code
        detail = shorten(exc.message)
        if status == 401:
            extra = " (no key was set, so a placeholder was sent)" if self._placeholder_key else ""
            return PlannerConfigurationError(
                f"the API key was rejected by {self.server} (HTTP 401){extra}; "
                "set OPENAI_API_KEY or pass api_key= with a valid key"
            )
        if status == 403:
            return PlannerConfigurationError(
                f"{self.server} refused access to model {self.model!r} (HTTP 403): {detail}; "
                "check the key's permissions or choose another --model"
            )
        if status == 404:
            return PlannerModelNotFoundError(
                f"{self.server} has no model {self.model!r} (HTTP 404): {detail}; "
                "check --model (and --base-url, which usually ends in /v1)"
            )
        if (
            status in (400, 422)
            and structured
            and _STRUCTURED_HINT.search(f"{exc.message} {exc.body}")
        ):
            return StructuredOutputUnsupported(detail)
        if status == 429:
            return PlannerError(
                f"{self.server} is rate-limiting requests (HTTP 429) after "
                f"{self.retry.retries + 1} attempts: {detail}; wait and try again"
            )
        if status >= 500:
            return PlannerError(
                f"{self.server} failed (HTTP {status}) {self.retry.retries + 1} times: {detail}"
            )
        return PlannerError(f"{self.server} rejected the request (HTTP {status}): {detail}")
