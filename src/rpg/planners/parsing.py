"""Reading a model's reply: drop reasoning, find the JSON object, validate it with pydantic.

:func:`strip_reasoning` is the one place that removes ``<think>…</think>`` blocks (the text
template parser uses it too). :func:`parse_plan_reply` accepts a JSON plan *or* the RPG text
format (through :func:`rpg.planners.template.parse_reply`); the review and edit replies go
through :func:`reply_json` and :func:`validate_reply` the same way. Every failure is a
:class:`~rpg.errors.PlannerError` carrying the raw reply, worded so the model can act on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rpg.errors import PlannerError
from rpg.models import DEFAULT_BASE_RATIO, PlanResult
from rpg.planners.reasoning import strip_reasoning
from rpg.planners.schema import PlanReply
from rpg.pydantic_errors import one_line

__all__ = [
    "describe_validation_error",
    "first_json_object",
    "parse_plan_reply",
    "reply_json",
    "shorten",
    "strip_reasoning",
    "validate_reply",
]

M = TypeVar("M", bound=BaseModel)


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
    return one_line(exc, fallback="reply", limit=6)


def reply_json(text: str) -> tuple[str, dict[str, Any] | None]:
    """The reply without reasoning, and the first JSON object in it (``None`` when there is none).

    An empty reply is a :class:`PlannerError`.
    """
    if not text or not text.strip():
        raise PlannerError("the reply is empty", raw=text or "")
    body = strip_reasoning(text)
    return body, first_json_object(body)


@contextmanager
def _invalid_reply(what: str, raw: str) -> Iterator[None]:
    try:
        yield
    except ValidationError as exc:
        raise PlannerError(
            f"the JSON reply is not a valid {what}: {describe_validation_error(exc)}", raw=raw
        ) from None


def validate_reply(data: dict[str, Any], model: type[M], *, what: str, raw: str) -> M:
    """``data`` validated as ``model``; a :class:`PlannerError` naming the problems otherwise."""
    with _invalid_reply(what, raw):
        return model.model_validate(data)


def parse_plan_reply(
    text: str, *, prompt: str, planner: str = "", size: tuple[int, int] | None = None
) -> PlanResult:
    """Turn a reply into a validated plan: a JSON object if there is one, else the text format
    (a split ratio, or boxes; ``size`` is the request's canvas for boxes in pixels).

    Raises :class:`PlannerError` with ``raw=text`` and a message the model can act on.
    """
    body, data = reply_json(text)
    if data is None:
        if body.lstrip().startswith(("{", "```json")):
            raise PlannerError(
                "the reply is not complete, valid JSON; answer with one whole JSON object",
                raw=text,
            )
        from rpg.planners import template

        return template.parse_reply(text, prompt=prompt, planner=planner, size=size)
    if "rows" not in data and "layers" not in data and isinstance(data.get("plan"), dict):
        # a PlanResult-like shape
        nested = dict(data["plan"])
        nested.setdefault("recaption", data.get("recaption", ""))
        data = nested
    data = dict(data)
    # Optional-in-spirit fields: a reply that leaves them out is still a usable plan.
    data.setdefault("recaption", "")
    data.setdefault("entities", [])
    data.setdefault("rows", [])  # a grid or a canvas: the one left out is empty
    data.setdefault("layers", [])
    data.setdefault("base_prompt", None)
    data.setdefault("base_ratio", DEFAULT_BASE_RATIO)
    with _invalid_reply("plan", text):
        return PlanReply.model_validate(data).to_result(prompt=prompt, raw=text, planner=planner)


def shorten(text: object, limit: int = 240) -> str:
    """``text`` on one line (white space folded), cut to ``limit`` characters with an ellipsis."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
