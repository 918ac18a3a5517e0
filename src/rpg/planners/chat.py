"""The chat conversation every LLM planner shares: messages, reply modes, validate → retry.

A backend (OpenAI-compatible, Ollama, local transformers) only knows how to send one
:class:`ChatRequest` and get text back (:meth:`ChatPlanner._complete`). Everything else lives
here so the backends behave the same way:

* the opening messages (:func:`build_messages`) in the RPG text template or as a JSON request;
* the reply-mode ladder: each backend lists the :class:`ReplyMode` values it can ask for, best
  first (e.g. JSON Schema → JSON mode → text template); a server that rejects one
  (:class:`~rpg.planners.transport.StructuredOutputUnsupported`) moves the planner one step down,
  for the rest of its life, without counting as an attempt;
* the validate → retry loop: a reply that does not validate is sent back to the model together
  with the error, a bounded number of times, and a final failure is a
  :class:`~rpg.errors.PlannerError` carrying the raw reply.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from rpg.errors import ConfigurationError, PlannerError
from rpg.models import DEFAULT_BASE_RATIO, PlanResult
from rpg.planners.parsing import parse_plan_reply
from rpg.planners.schema import ReplyFormat
from rpg.planners.transport import StructuredOutputUnsupported

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "ChatMessage",
    "ChatPlanner",
    "ChatRequest",
    "ReplyMode",
    "attach_image",
    "b64",
    "build_messages",
    "encode_image_png",
    "json_instructions",
    "json_retry_message",
]

log = logging.getLogger("rpg.planners")

#: A chat message as the backends exchange it: ``{"role": ..., "content": ...}``.
ChatMessage = dict[str, str]

T = TypeVar("T")


class ReplyMode(str, Enum):
    """How a reply is asked for, from the most to the least constrained."""

    #: The service holds the reply to the JSON Schema (OpenAI ``json_schema``, Ollama
    #: ``format=<schema>``, a grammar for local decoding).
    SCHEMA = "schema"
    #: JSON mode with the schema alongside (llama.cpp's ``json_object`` + ``schema``).
    JSON_WITH_SCHEMA = "json+schema"
    #: JSON mode: any JSON object; the instructions describe the fields.
    JSON = "json"
    #: The RPG text template ("Final split ratio: …"), parsed tolerantly.
    TEXT = "text"


@dataclass(frozen=True)
class ChatRequest:
    """One call to a chat backend: the conversation so far and how the reply is asked for.

    ``image_png`` goes with the first user message. ``reply_format`` is the JSON reply wanted
    (the plan when ``None``).
    """

    messages: list[ChatMessage]
    mode: ReplyMode
    image_png: bytes | None = None
    reply_format: ReplyFormat | None = None

    @property
    def structured(self) -> bool:
        """Whether the service is asked to constrain the reply (any mode but text)."""
        return self.mode is not ReplyMode.TEXT


def attach_image(
    messages: Iterable[ChatMessage],
    image_png: bytes | None,
    attach: Callable[[dict[str, Any], bytes], dict[str, Any]],
) -> list[dict[str, Any]]:
    """``messages`` as plain dicts with ``attach(message, png)`` applied to the first user one."""
    out: list[dict[str, Any]] = []
    pending = image_png
    for m in messages:
        entry: dict[str, Any] = dict(m)
        if pending is not None and m["role"] == "user":
            entry = attach(entry, pending)
            pending = None
        out.append(entry)
    return out


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
        "layers": [],
        "base_prompt": "two cats resting side by side on a sunny windowsill",
        "base_ratio": DEFAULT_BASE_RATIO,
    }
    layered = {
        "recaption": "A cosy living room in warm evening lamp light: ...",
        "entities": [
            {"name": "sofa", "attributes": ["grey fabric", "two plump cushions"]},
            {"name": "cat", "attributes": ["ginger", "curled up asleep"]},
        ],
        "rows": [],
        "layers": [
            {
                "prompt": "a grey fabric sofa with two plump cushions, cosy living room",
                "box": [0.05, 0.5, 0.95, 0.95],
            },
            {
                "prompt": "a ginger cat curled up asleep, cosy living room",
                "box": [0.3, 0.42, 0.7, 0.72],
            },
        ],
        "base_prompt": "a cosy living room with a pale green wall, warm evening lamp light",
        "base_ratio": DEFAULT_BASE_RATIO,
    }
    return (
        "REPLY FORMAT: do the same steps, but answer with one JSON object only, not the "
        'labelled lines. Its fields: "recaption" (step 1), "entities" (step 2, each with '
        '"name" and "attributes"), "rows" (step 3: rows top to bottom, each with a '
        'relative "height" and its "regions" left to right, each region with its own '
        '"prompt" and a relative "width"), "layers" (step 3 when rows and columns cannot '
        'hold the picture: the layers bottom to top, each with its own "prompt" and its "box" '
        "[x0, y0, x1, y1] as fractions of the canvas; give either rows or layers and leave the "
        'other list empty), "base_prompt" (step 4, or the background prompt of layers; null '
        f'when not used) and "base_ratio" (how strongly the base prompt is blended in, 0 to 1, '
        f"usually {DEFAULT_BASE_RATIO}). For example, the first example above becomes:\n"
        + json.dumps(example)
        + "\nand a plan with layers, like the sofa example, looks like this:\n"
        + json.dumps(layered)
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


class ChatPlanner(ABC):
    """Base of the chat-model planners: the reply-mode ladder and the validate → retry loop.

    Subclasses set :attr:`name`, :attr:`model` and :attr:`reply_modes` and implement
    :meth:`_complete`. ``structured`` is ``True`` or ``None`` to start at the best reply mode
    and step down when the server rejects one, ``False`` for the text template only. It becomes
    ``False`` once the planner has stepped down to the text template.
    """

    name: str = "chat"
    model: str = ""
    #: Whether the backend can be sent an image.
    supports_images: bool = True
    #: The reply modes this backend can ask for, best first; the last is the fallback.
    reply_modes: tuple[ReplyMode, ...] = (ReplyMode.SCHEMA, ReplyMode.TEXT)
    #: The canvas ``(width, height)`` in pixels that boxes in pixels refer to, when a reply
    #: gives its boxes in pixels without saying the size (see :mod:`rpg.planners.boxes`).
    canvas_size: tuple[int, int] | None = None

    def __init__(self, *, structured: bool | None = None, validation_retries: int = 2) -> None:
        if validation_retries < 0:
            raise ConfigurationError("validation_retries must be 0 or more")
        self.structured = structured
        self.validation_retries = validation_retries
        self.reply_mode = self.reply_modes[0] if structured is not False else ReplyMode.TEXT

    @property
    def planner_id(self) -> str:
        """``backend/model``, as recorded in :attr:`PlanResult.planner` and cache keys."""
        return f"{self.name}/{self.model}" if self.model else self.name

    def cache_identity(self) -> dict[str, Any]:
        """What decides this planner's answer to a prompt, for plan cache keys.

        The planner id and model, plus every option that changes the reply: subclasses add
        theirs (the server, the temperature, ...). Never a secret: keys are not part of it.
        """
        return {"planner": self.planner_id, "model": self.model}

    @abstractmethod
    def _complete(self, request: ChatRequest) -> str:
        """Send ``request`` and return the reply text with reasoning already removed.

        Transport failures are retried inside and turned into :class:`PlannerError`; a server
        that rejects ``request.mode`` raises :class:`StructuredOutputUnsupported`.
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
            lambda raw: parse_plan_reply(
                raw, prompt=prompt, planner=self.planner_id, size=self.canvas_size
            ),
            image_png=self._image_png(image),
        )
        return result.model_copy(update={"seconds": time.perf_counter() - start})

    def _step_down(self, rejected: StructuredOutputUnsupported) -> None:
        """Move to the next reply mode after the server rejected the current one."""
        modes = self.reply_modes
        index = modes.index(self.reply_mode) if self.reply_mode in modes else len(modes) - 1
        if index + 1 >= len(modes):  # pragma: no cover - a backend bug
            raise PlannerError(str(rejected)) from None
        self.reply_mode = modes[index + 1]
        if self.reply_mode is ReplyMode.TEXT:
            self.structured = False
        log.info(
            "%s: reply mode %s rejected (%s); using %s",
            self.planner_id,
            modes[index].value,
            rejected,
            self.reply_mode.value,
        )

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

        ``first_messages(json)`` opens the conversation (``json``: whether the reply mode asks
        for JSON); ``parse`` turns a reply into the result or raises :class:`PlannerError`,
        whose message is sent back to the model (through ``retry_message(error, json)``) a
        bounded number of times.
        """
        again = retry_message or (
            lambda error, structured: _retry_message(error, structured=structured)
        )
        mode = self.reply_mode
        messages = first_messages(mode is not ReplyMode.TEXT)
        attempts = self.validation_retries + 1
        last_error = ""
        raw = ""
        attempt = 0
        while attempt < attempts:
            request = ChatRequest(messages, mode, image_png=image_png, reply_format=reply_format)
            try:
                raw = self._complete(request)
            except StructuredOutputUnsupported as exc:
                if not request.structured:  # pragma: no cover - a backend bug
                    raise PlannerError(str(exc)) from None
                self._step_down(exc)
                mode = self.reply_mode
                if mode is ReplyMode.TEXT:
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
                    {"role": "user", "content": again(last_error, request.structured)},
                ]
        raise PlannerError(
            f"{self.planner_id} gave no valid {what} in {attempts} attempt"
            f"{'s' if attempts != 1 else ''}; last problem: {last_error}",
            raw=raw,
        )


def b64(data: bytes) -> str:
    """Base64 text of ``data`` (how images travel in JSON)."""
    return base64.b64encode(data).decode("ascii")


def encode_image_png(image: Image) -> bytes:
    """The image as PNG bytes (what multimodal APIs are sent, base64-encoded)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
