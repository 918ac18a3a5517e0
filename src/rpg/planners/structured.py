"""What every LLM planner backend shares: the reply schema, parsing, validation and retries.

A backend (OpenAI-compatible, Ollama, local transformers) only knows how to send a list of chat
messages and get text back. Everything else lives here so the backends behave the same way:

* :class:`PlanReply` is the JSON object the model is asked for. It is derived from the field
  descriptions of :mod:`rpg.models`, and :func:`plan_schema` exports it in the shapes the
  services accept (OpenAI strict mode, Ollama ``format=``, constrained local decoding).
* :func:`parse_plan_reply` accepts a JSON reply *or* the RPG text format (through
  :func:`rpg.planners.template.parse_reply`), after dropping reasoning blocks.
* :class:`ChatPlanner` runs the validate → retry loop: a reply that does not validate is sent
  back to the model together with the error, a bounded number of times, and a final failure is a
  :class:`~rpg.errors.PlannerError` carrying the raw reply.
* :class:`RetryPolicy` / :func:`call_with_retries` retry transient transport failures (429, 5xx,
  connection errors, timeouts) with exponential backoff, jitter and a capped ``retry-after``.
"""

from __future__ import annotations

import base64
import copy
import email.utils
import io
import json
import logging
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rpg.errors import ConfigurationError, ModelNotFoundError, PlannerError
from rpg.models import (
    DEFAULT_BASE_RATIO,
    Entity,
    PlanResult,
    Recaption,
    Region,
    RegionPlan,
    Row,
)

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "SCHEMA_NAME",
    "ChatMessage",
    "ChatPlanner",
    "PlanReply",
    "PlannerConfigurationError",
    "PlannerModelNotFoundError",
    "ReplyEntity",
    "ReplyFormat",
    "ReplyRegion",
    "ReplyRow",
    "Retry",
    "RetryPolicy",
    "StructuredOutputUnsupported",
    "build_messages",
    "call_with_retries",
    "describe_validation_error",
    "encode_image_png",
    "first_json_object",
    "json_instructions",
    "json_retry_message",
    "parse_plan_reply",
    "parse_retry_after",
    "plan_schema",
    "reply_schema",
    "shorten",
    "strip_reasoning",
]

log = logging.getLogger("rpg.planners")

#: The name under which the schema is sent (OpenAI's ``json_schema.name``).
SCHEMA_NAME = "rpg_region_plan"

#: A chat message as the backends exchange it: ``{"role": ..., "content": ...}``.
ChatMessage = dict[str, str]

T = TypeVar("T")


# --------------------------------------------------------------------------- errors


class PlannerConfigurationError(PlannerError, ConfigurationError):
    """The service refused us because of a setting (typically a rejected API key).

    It is a :class:`PlannerError` (the planner contract) and a :class:`ConfigurationError` (what
    the user must fix), so callers can catch either.
    """


class PlannerModelNotFoundError(PlannerError, ModelNotFoundError):
    """The service does not have the requested model (e.g. an Ollama model that is not pulled)."""


class StructuredOutputUnsupported(Exception):
    """Raised by a backend when the server rejects structured output.

    :class:`ChatPlanner` catches it, switches to the text template for the rest of the
    planner's life and asks again; it never reaches the caller.
    """


# --------------------------------------------------------------------------- reply schema

_STRICT = ConfigDict(extra="forbid")


def _doc(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].description or ""


class ReplyEntity(BaseModel):
    """An entity in the model's reply (mirrors :class:`rpg.models.Entity`, all fields required)."""

    model_config = _STRICT

    name: str = Field(description=_doc(Entity, "name"))
    attributes: list[str] = Field(description=_doc(Entity, "attributes"))


class ReplyRegion(BaseModel):
    """A region in the model's reply: its prompt and relative width."""

    model_config = _STRICT

    prompt: str = Field(description=_doc(Region, "prompt"))
    width: float = Field(gt=0, description=_doc(Region, "width"))


class ReplyRow(BaseModel):
    """A row in the model's reply: its relative height and its regions, left to right."""

    model_config = _STRICT

    height: float = Field(gt=0, description=_doc(Row, "height"))
    regions: list[ReplyRegion] = Field(min_length=1, description=_doc(Row, "regions"))


class PlanReply(BaseModel):
    """The one JSON object a planner model is asked to return.

    Every field is required (and nullable where "none" is a valid answer) because OpenAI's
    strict structured-output mode demands it, and a constrained decoder then cannot stop early.
    The order is the order of the reasoning: recaption, entities, layout, base prompt.
    """

    model_config = _STRICT

    recaption: str = Field(description=_doc(Recaption, "recaption"))
    entities: list[ReplyEntity] = Field(description=_doc(Recaption, "entities"))
    rows: list[ReplyRow] = Field(min_length=1, description=_doc(RegionPlan, "rows"))
    base_prompt: str | None = Field(description=_doc(RegionPlan, "base_prompt"))
    base_ratio: float = Field(ge=0, le=1, description=_doc(RegionPlan, "base_ratio"))

    def to_result(self, *, prompt: str, raw: str = "", planner: str = "") -> PlanResult:
        """Convert to a validated :class:`PlanResult`; pydantic errors propagate."""
        plan = RegionPlan(
            rows=[
                Row(
                    height=row.height,
                    regions=[Region(prompt=r.prompt, width=r.width) for r in row.regions],
                )
                for row in self.rows
            ],
            base_prompt=self.base_prompt,
            base_ratio=self.base_ratio,
        )
        recaption = Recaption(
            original_prompt=prompt,
            recaption=self.recaption.strip() or prompt,
            entities=[
                Entity(name=e.name.strip(), attributes=[a.strip() for a in e.attributes if a])
                for e in self.entities
                if e.name.strip()
            ],
        )
        return PlanResult(recaption=recaption, plan=plan, raw=raw, planner=planner)


# Keywords OpenAI's strict mode has rejected on some models and servers; the reply is validated
# by pydantic afterwards anyway, so dropping them loses nothing.
_STRICT_UNSUPPORTED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "default",
        "title",
    }
)

# Bounds for constrained local decoding: a small model held to a schema can still write an
# endless string or list; these keep a reply inside a modest token budget.
_BOUNDS: dict[str, dict[str, int]] = {
    "recaption": {"maxLength": 200},
    "entities": {"maxItems": 4},
    "name": {"maxLength": 30},
    "attributes": {"maxItems": 3},
    "attribute": {"maxLength": 30},
    "prompt": {"minLength": 3, "maxLength": 120},
    "rows": {"maxItems": 3},
    "regions": {"maxItems": 3},
    "base_prompt": {"maxLength": 120},
}


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _inline_refs(target, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _walk(
    node: Any, fn: Callable[[dict[str, Any], str | None], None], key: str | None = None
) -> None:
    if isinstance(node, dict):
        fn(node, key)
        for name, sub in node.get("properties", {}).items():
            _walk(sub, fn, name)
        if "items" in node:
            _walk(node["items"], fn, None)
        for sub in node.get("anyOf", []):
            _walk(sub, fn, key)


def reply_schema(
    model: type[BaseModel],
    *,
    strict: bool = False,
    bounded: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    """The JSON Schema of a reply model, self-contained (no ``$ref``), as services accept it.

    ``strict=True`` gives the subset OpenAI's strict structured output accepts (every property
    required, ``additionalProperties: false``, no numeric or length bounds). ``bounded=True`` adds
    length and count limits, for constrained decoding by small local models. ``description``
    replaces the top-level docstring, which is written for Python readers.
    """
    raw = model.model_json_schema()
    schema: dict[str, Any] = _inline_refs(raw, raw.get("$defs", {}))

    def fix(node: dict[str, Any], key: str | None) -> None:
        node.pop("title", None)
        if node.get("type") == "object":
            node["additionalProperties"] = False
            node["required"] = list(node.get("properties", {}))
        if node.get("type") == "object" and key is None:
            node.pop("description", None)  # a class docstring, written for Python readers
        if bounded and key in _BOUNDS and node.get("type") in ("string", "array"):
            node.update(_BOUNDS[key])
            if key == "attributes":
                node["items"].update(_BOUNDS["attribute"])
        if strict:
            for k in _STRICT_UNSUPPORTED & node.keys():
                del node[k]

    _walk(schema, fix)
    if description:
        schema["description"] = description
    return schema


def plan_schema(*, strict: bool = False, bounded: bool = False) -> dict[str, Any]:
    """The JSON Schema of :class:`PlanReply` (see :func:`reply_schema` for the flags)."""
    return reply_schema(
        PlanReply,
        strict=strict,
        bounded=bounded,
        description=(
            "An image plan: the recaptioned prompt, its key entities, and the canvas split into "
            "rows (top to bottom) of regions (left to right), each region with its own prompt."
        ),
    )


@dataclass(frozen=True)
class ReplyFormat:
    """A JSON reply other than a plan that a chat planner can be asked for (review, edit).

    Backends send :meth:`schema` as structured output under :attr:`name`; ``None`` in their
    ``reply_format`` argument means the plan schema.
    """

    name: str
    model: type[BaseModel]
    description: str

    def schema(self, *, strict: bool = False) -> dict[str, Any]:
        return reply_schema(self.model, strict=strict, description=self.description)


def json_instructions() -> str:
    """The addendum that turns the text-format instructions into a JSON request."""
    example = {
        "recaption": "Two cats rest side by side on a sunny windowsill: ...",
        "entities": [
            {"name": "white cat", "attributes": ["fluffy", "green eyes"]},
            {"name": "black cat", "attributes": ["sleek", "yellow eyes"]},
        ],
        "rows": [
            {
                "height": 1,
                "regions": [
                    {
                        "prompt": "a fluffy white cat with green eyes on a sunny windowsill",
                        "width": 1,
                    },
                    {
                        "prompt": "a sleek black cat with yellow eyes on a sunny windowsill",
                        "width": 1,
                    },
                ],
            }
        ],
        "base_prompt": "two cats resting side by side on a sunny windowsill",
        "base_ratio": DEFAULT_BASE_RATIO,
    }
    return (
        "REPLY FORMAT: do the same steps, but answer with one JSON object only, not the "
        'labelled lines. Its fields: "recaption" (step 1), "entities" (step 2, each with '
        '"name" and "attributes"), "rows" (step 3: rows top to bottom, each with a '
        'relative "height" and its "regions" left to right, each region with its own '
        '"prompt" and a relative "width"), "base_prompt" (step 4; null when not used) and '
        f'"base_ratio" (how strongly the base prompt is blended in, 0 to 1, usually '
        f"{DEFAULT_BASE_RATIO}). For example, the first example above becomes:\n"
        + json.dumps(example)
    )


def build_messages(prompt: str, *, structured: bool) -> list[ChatMessage]:
    """The first two messages of a planning conversation (system, user)."""
    from rpg.planners import template

    system = template.INSTRUCTIONS
    user = template.build_user_message(prompt)
    if structured:
        system = f"{system}\n\n{json_instructions()}"
        user = f"Caption: {prompt.strip()}\n\nPlan this caption and answer with the JSON object."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def json_retry_message(error: str) -> str:
    """The message that sends a rejected JSON reply back to the model, with the problem."""
    return (
        f'Your reply could not be used: "{error.strip()}". Answer again with the whole '
        "JSON object, fixing that problem."
    )


def _retry_message(error: str, *, structured: bool) -> str:
    from rpg.planners import template

    if structured:
        return json_retry_message(error)
    return template.build_retry_message(error)


# --------------------------------------------------------------------------- parsing

_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """Drop ``<think>…</think>`` blocks, and everything before a lone ``</think>``.

    Reasoning models (DeepSeek-R1 style) put their chain of thought in such blocks; some chat
    templates emit the opening tag themselves, so only the closing one reaches us.
    """
    cleaned = _THINK_BLOCK.sub("", text)
    close = list(_THINK_CLOSE.finditer(cleaned))
    if close:
        cleaned = cleaned[close[-1].end() :]
    return cleaned.strip() if cleaned != text else text


def first_json_object(text: str) -> Any | None:
    """The first JSON object (a ``dict``) found anywhere in ``text``, or ``None``."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error (first six problems), for the model to act on."""
    parts = []
    for err in exc.errors()[:6]:
        where = ".".join(str(p) for p in err["loc"]) or "reply"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = len(exc.errors()) - 6
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_plan_reply(text: str, *, prompt: str, planner: str = "") -> PlanResult:
    """Turn a reply into a validated plan: a JSON object if there is one, else the text format.

    Raises :class:`PlannerError` with ``raw=text`` and a message the model can act on.
    """
    if not text or not text.strip():
        raise PlannerError("the reply is empty", raw=text or "")
    body = strip_reasoning(text)
    data = first_json_object(body)
    if data is None:
        if body.lstrip().startswith(("{", "```json")):
            raise PlannerError(
                "the reply is not complete, valid JSON; answer with one whole JSON object",
                raw=text,
            )
        from rpg.planners import template

        return template.parse_reply(text, prompt=prompt, planner=planner)
    if "rows" not in data and isinstance(data.get("plan"), dict):  # a PlanResult-like shape
        nested = dict(data["plan"])
        nested.setdefault("recaption", data.get("recaption", ""))
        data = nested
    data = dict(data)
    # Optional-in-spirit fields: a reply that leaves them out is still a usable plan.
    data.setdefault("recaption", "")
    data.setdefault("entities", [])
    data.setdefault("base_prompt", None)
    data.setdefault("base_ratio", DEFAULT_BASE_RATIO)
    try:
        reply = PlanReply.model_validate(data)
        return reply.to_result(prompt=prompt, raw=text, planner=planner)
    except ValidationError as exc:
        raise PlannerError(
            f"the JSON reply is not a valid plan: {describe_validation_error(exc)}", raw=text
        ) from None


def shorten(text: object, limit: int = 240) -> str:
    """``text`` on one line (white space folded), cut to ``limit`` characters with an ellipsis."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


# --------------------------------------------------------------------------- images


def encode_image_png(image: Image) -> bytes:
    """The image as PNG bytes (what multimodal APIs are sent, base64-encoded)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- transport retries


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
    ``sleep`` is injectable so tests can record waits instead of waiting.
    """

    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
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

    The last exception propagates unchanged when the retries are used up or the failure is not
    transient, so the backend can turn it into a message about its own service.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None or attempt >= policy.retries:
                raise
            wait = policy.delay(attempt, verdict.after)
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


# --------------------------------------------------------------------------- the shared loop


class ChatPlanner(ABC):
    """Base of the chat-model planners: the validate → retry loop around one backend call.

    Subclasses set :attr:`name` and :attr:`model` and implement :meth:`_complete`. ``structured``
    is ``True`` to ask for JSON through the service's structured-output feature, ``False`` for
    the text template, ``None`` to try structured output and fall back when the server rejects it.
    """

    name: str = "chat"
    model: str = ""
    #: Whether the backend can be sent an image.
    supports_images: bool = True

    def __init__(self, *, structured: bool | None = None, validation_retries: int = 2) -> None:
        if validation_retries < 0:
            raise ConfigurationError("validation_retries must be 0 or more")
        self.structured = structured
        self.validation_retries = validation_retries

    @property
    def planner_id(self) -> str:
        """``backend/model``, as recorded in :attr:`PlanResult.planner` and cache keys."""
        return f"{self.name}/{self.model}" if self.model else self.name

    @abstractmethod
    def _complete(
        self,
        messages: list[ChatMessage],
        *,
        structured: bool,
        image_png: bytes | None,
        reply_format: ReplyFormat | None = None,
    ) -> str:
        """Send ``messages`` and return the reply text with reasoning already removed.

        ``image_png`` goes with the first user message. With ``structured``, the reply is
        constrained to ``reply_format``'s schema (the plan schema when ``None``). Transport
        failures are retried inside and turned into :class:`PlannerError`; a server that rejects
        structured output raises :class:`StructuredOutputUnsupported`.
        """

    def _image_png(self, image: Image | None) -> bytes | None:
        """PNG bytes of ``image``, or a clear error when this backend cannot read images."""
        if image is None:
            return None
        if not self.supports_images:
            raise PlannerError(
                f"the {self.name} planner cannot read images ({self.planner_id} is text-only);"
                " use a multimodal model through the openai or ollama planner"
            )
        return encode_image_png(image)

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult:
        """Ask the model for a plan, validate it, and send validation errors back to the model."""
        if not prompt or not prompt.strip():
            raise PlannerError("the prompt is empty; give a caption to plan")
        start = time.perf_counter()
        result = self._converse(
            lambda structured: build_messages(prompt, structured=structured),
            lambda raw: parse_plan_reply(raw, prompt=prompt, planner=self.planner_id),
            image_png=self._image_png(image),
        )
        return result.model_copy(update={"seconds": time.perf_counter() - start})

    def _converse(
        self,
        first_messages: Callable[[bool], list[ChatMessage]],
        parse: Callable[[str], T],
        *,
        image_png: bytes | None = None,
        reply_format: ReplyFormat | None = None,
        retry_message: Callable[[str, bool], str] | None = None,
        what: str = "plan",
    ) -> T:
        """The validate → retry loop shared by planning, reviewing and editing.

        ``first_messages(structured)`` opens the conversation; ``parse`` turns a reply into the
        result or raises :class:`PlannerError`, whose message is sent back to the model
        (through ``retry_message(error, structured)``) a bounded number of times.
        """
        again = retry_message or (
            lambda error, structured: _retry_message(error, structured=structured)
        )
        structured = self.structured is not False
        messages = first_messages(structured)
        attempts = self.validation_retries + 1
        last_error = ""
        raw = ""
        attempt = 0
        while attempt < attempts:
            try:
                raw = self._complete(
                    messages, structured=structured, image_png=image_png, reply_format=reply_format
                )
            except StructuredOutputUnsupported as exc:
                if not structured:  # pragma: no cover - a backend bug
                    raise PlannerError(str(exc)) from None
                log.info(
                    "%s: structured output rejected (%s); using the text template",
                    self.planner_id,
                    exc,
                )
                self.structured = structured = False
                messages = first_messages(False)
                continue  # not counted: the model has not answered yet
            try:
                return parse(raw)
            except PlannerError as exc:
                last_error = str(exc)
                attempt += 1
                log.info(
                    "%s: reply %d of %d rejected: %s",
                    self.planner_id,
                    attempt,
                    attempts,
                    last_error,
                )
                messages = [
                    *messages,
                    {"role": "assistant", "content": raw},
                    {"role": "user", "content": again(last_error, structured)},
                ]
        raise PlannerError(
            f"{self.planner_id} gave no valid {what} in {attempts} attempt"
            f"{'s' if attempts != 1 else ''}; last problem: {last_error}",
            raw=raw,
        )


def b64(data: bytes) -> str:
    """Base64 text of ``data`` (how images travel in JSON)."""
    return base64.b64encode(data).decode("ascii")
