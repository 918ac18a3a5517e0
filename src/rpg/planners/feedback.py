"""Planners that look at an image: review a rendered plan, or plan a regional edit.

RPG closes its loop with a multimodal model. Two questions are asked (the instructions and
messages are in :mod:`rpg.planners.feedback_prompts`), each answered with one JSON object whose
schema comes from the pydantic models of :mod:`rpg.planners.feedback_replies` (importable from
here too):

* :class:`Review` — "does this image match the prompt?": a critique, ``done``, and when not done
  a revised :class:`~rpg.models.RegionPlan` (validated like any plan) to render with the same seed.
* :class:`EditPlan` — "which regions must change to follow this instruction?": region indices in
  reading order and their new prompts, plus a plan describing the image when it had none.

The conversation, structured output, validation and retries are
:meth:`rpg.planners.chat.ChatPlanner._converse`, shared with planning, so a reply that does
not validate is sent back with the error, a bounded number of times. :class:`MultimodalChatPlanner`
adds :meth:`~MultimodalChatPlanner.review` and :meth:`~MultimodalChatPlanner.plan_edit` to the
``openai`` and ``ollama`` backends (through :class:`rpg.planners.remote.RemoteChatPlanner`);
:func:`as_multimodal` turns any other planner into a clear
:class:`~rpg.errors.PlannerError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rpg.errors import PlannerError
from rpg.models import RegionPlan
from rpg.planners.base import Planner
from rpg.planners.chat import ChatPlanner, json_retry_message
from rpg.planners.feedback_prompts import (
    EDIT_INSTRUCTIONS,
    REVIEW_INSTRUCTIONS,
    build_edit_messages,
    build_review_messages,
    describe_regions,
)
from rpg.planners.feedback_replies import (
    EDIT_FORMAT,
    REVIEW_FORMAT,
    EditPlan,
    RegionChange,
    Review,
    parse_edit_reply,
    parse_review_reply,
)

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "EDIT_FORMAT",
    "EDIT_INSTRUCTIONS",
    "MULTIMODAL_PLANNERS",
    "REVIEW_FORMAT",
    "REVIEW_INSTRUCTIONS",
    "EditPlan",
    "MultimodalChatPlanner",
    "MultimodalPlanner",
    "RegionChange",
    "Review",
    "as_multimodal",
    "build_edit_messages",
    "build_review_messages",
    "describe_regions",
    "parse_edit_reply",
    "parse_review_reply",
]

#: The built-in planners that can look at images; named in errors about text-only planners.
MULTIMODAL_PLANNERS = ("openai", "ollama")


def _retry(error: str, structured: bool) -> str:
    # Reviews and edits are JSON even when the server does not enforce a schema.
    return json_retry_message(error)


@runtime_checkable
class MultimodalPlanner(Planner, Protocol):
    """A planner that can also look at a rendered image: review it, or plan a regional edit."""

    def review(self, prompt: str, plan: RegionPlan, image: Image) -> Review: ...

    def plan_edit(
        self, instruction: str, image: Image, plan: RegionPlan | None = None
    ) -> EditPlan: ...


class MultimodalChatPlanner(ChatPlanner):
    """A chat planner whose model reads images; the base of the ``openai`` and ``ollama`` ones."""

    def review(self, prompt: str, plan: RegionPlan, image: Image) -> Review:
        """Show the model ``image`` (rendered from ``plan`` for ``prompt``) and get its verdict."""
        if not prompt or not prompt.strip():
            raise PlannerError("the prompt is empty; a review compares the image with the prompt")
        return self._converse(
            lambda structured: build_review_messages(prompt, plan),
            parse_review_reply,
            image_png=self._image_png(image),
            reply_format=REVIEW_FORMAT,
            retry_message=_retry,
            what="review",
        )

    def plan_edit(self, instruction: str, image: Image, plan: RegionPlan | None = None) -> EditPlan:
        """Ask which regions of ``plan`` (or of a plan the model makes up) to redraw, and how."""
        if not instruction or not instruction.strip():
            raise PlannerError("the edit instruction is empty; say what to change")
        return self._converse(
            lambda structured: build_edit_messages(instruction, plan),
            lambda raw: parse_edit_reply(raw, plan),
            image_png=self._image_png(image),
            reply_format=EDIT_FORMAT,
            retry_message=_retry,
            what="edit plan",
        )


def as_multimodal(planner: Planner) -> MultimodalPlanner:
    """``planner`` (unwrapped from caches) if it can review and edit; a clear error otherwise."""
    inner: Any = planner
    seen = 0
    while not isinstance(inner, MultimodalPlanner) and hasattr(inner, "planner") and seen < 8:
        inner = inner.planner  # CachedPlanner and similar wrappers
        seen += 1
    if isinstance(inner, MultimodalPlanner) and getattr(inner, "supports_images", True):
        return inner
    name = getattr(planner, "name", type(planner).__name__)
    names = " or ".join(f"'{n}'" for n in MULTIMODAL_PLANNERS)
    raise PlannerError(
        f"the {name!r} planner cannot look at images, so it cannot review or edit them; use a "
        f"multimodal planner: {names} with a vision model (for example gpt-4o-mini, or "
        "qwen2.5vl on Ollama)"
    )
