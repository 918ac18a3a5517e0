"""Planners that look at an image: review a rendered plan, or plan a regional edit.

RPG closes its loop with a multimodal model. Two questions are asked, each answered with one
JSON object whose schema comes from the pydantic models below:

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

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rpg.errors import PlannerError
from rpg.models import RegionPlan
from rpg.planners.base import Planner
from rpg.planners.chat import ChatMessage, ChatPlanner, json_retry_message
from rpg.planners.parsing import reply_json, validate_reply
from rpg.planners.schema import ReplyFormat

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

log = logging.getLogger("rpg.planners")

#: The built-in planners that can look at images; named in errors about text-only planners.
MULTIMODAL_PLANNERS = ("openai", "ollama")

_STRICT = ConfigDict(frozen=True, extra="forbid")
M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- reply models


class Review(BaseModel):
    """A multimodal model's verdict on one rendered image, and its correction."""

    model_config = _STRICT

    critique: str = Field(
        description="A short critique: what in the image does not match the prompt (wrong or "
        "missing objects, attributes on the wrong object, wrong positions or counts), or why it "
        "already matches.",
    )
    done: bool = Field(
        description="true when the image already matches the prompt and needs no further round."
    )
    plan: RegionPlan | None = Field(
        default=None,
        description="When done is false: the revised region plan to render again with the same "
        "seed, in the same shape as the current plan. Null when done is true.",
    )

    @model_validator(mode="after")
    def _plan_when_not_done(self) -> Review:
        if not self.done and self.plan is None:
            raise ValueError(
                'a review with "done": false must give the revised plan in "plan" '
                '(or set "done": true if the image needs no change)'
            )
        return self


class RegionChange(BaseModel):
    """One region to redraw, by its index in reading order, with its new prompt."""

    model_config = _STRICT

    index: int = Field(
        ge=0,
        description="The region's index in reading order, counted from 0: rows top to bottom, "
        "regions left to right within a row.",
    )
    prompt: str = Field(
        description="The region's new prompt, complete (it replaces the old one): the changed "
        "content plus the setting and style words the region should keep.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("a new region prompt must not be empty")
        return v


class EditPlan(BaseModel):
    """Which regions of a plan to redraw, and how, to carry out an edit instruction.

    As returned by :meth:`MultimodalPlanner.plan_edit`, ``plan`` is always the plan the indices
    refer to: the one given, or the one the model described when the image had none.
    """

    model_config = _STRICT

    explanation: str = Field(
        description="One or two sentences: what the instruction asks for and which regions of "
        "the image that touches."
    )
    plan: RegionPlan | None = Field(
        default=None,
        description="Only when no plan was given: a plan describing the image as it is now "
        "(rows top to bottom, regions left to right, each prompt describing what that region "
        "shows). Null when a plan was given.",
    )
    changes: list[RegionChange] = Field(
        min_length=1,
        description="The regions to redraw, as few as the instruction needs, each with its new "
        "prompt.",
    )

    @field_validator("changes")
    @classmethod
    def _distinct(cls, v: list[RegionChange]) -> list[RegionChange]:
        seen = [c.index for c in v]
        dupes = sorted({i for i in seen if seen.count(i) > 1})
        if dupes:
            raise ValueError(f"region {dupes[0]} is listed more than once; list each region once")
        return v

    @property
    def indices(self) -> list[int]:
        """The changed regions' indices, in reading order."""
        return sorted(c.index for c in self.changes)

    def edited_plan(self) -> RegionPlan:
        """``plan`` with the changed regions' prompts replaced (validated)."""
        if self.plan is None:
            raise PlannerError("this edit has no plan to apply its changes to")
        new = {c.index: c.prompt for c in self.changes}
        data = self.plan.model_dump()
        k = 0
        for row in data["rows"]:
            for region in row["regions"]:
                if k in new:
                    region["prompt"] = new[k]
                k += 1
        return RegionPlan.model_validate(data)


REVIEW_FORMAT = ReplyFormat(
    name="rpg_review",
    model=Review,
    description="A review of a generated image against its prompt: a critique, whether it is "
    "done, and a revised region plan when it is not.",
)
EDIT_FORMAT = ReplyFormat(
    name="rpg_edit",
    model=EditPlan,
    description="A regional edit: which regions of the plan to redraw, with their new prompts.",
)


# --------------------------------------------------------------------------- instructions

_PLAN_SHAPE = (
    'A plan is a JSON object: "rows" (top to bottom; each with a relative "height" and its '
    '"regions" left to right; each region with its own "prompt", a relative "width", and '
    'optionally "negative_prompt" and "base_weight", null for the defaults), "base_prompt" (a '
    "prompt for the whole picture that is blended into every region, or null) and "
    '"base_ratio" (how strongly the base prompt is blended in, 0 to 1).'
)

_REVIEW_EXAMPLE: dict[str, Any] = {
    "critique": "The mug on the right came out red instead of blue, and the apple is tiny.",
    "done": False,
    "plan": {
        "rows": [
            {
                "height": 1,
                "regions": [
                    {
                        "prompt": "a large shiny red apple, close-up, on a wooden table",
                        "width": 1,
                        "negative_prompt": None,
                        "base_weight": None,
                    },
                    {
                        "prompt": "a cobalt blue ceramic mug on a wooden table, blue glaze",
                        "width": 1,
                        "negative_prompt": None,
                        "base_weight": None,
                    },
                ],
            }
        ],
        "base_prompt": "still life on a wooden table, soft daylight",
        "base_ratio": 0.2,
    },
}
_EDIT_EXAMPLE: dict[str, Any] = {
    "explanation": "The cat is in region 1, the right half; only it changes colour.",
    "plan": None,
    "changes": [{"index": 1, "prompt": "a sleek black cat sitting on a sunny windowsill"}],
}

REVIEW_INSTRUCTIONS = f"""\
You are the art director of a regional text-to-image system. The system cuts the canvas into \
rows, top to bottom, and each row into regions, left to right; every region is painted from its \
own prompt, optionally mixed with a base prompt for the whole scene. You receive the user's \
prompt, the plan that was painted, and the picture that came out.

Judge the picture against the user's prompt, not against the plan:
1. Note what is off: an object missing or doubled, an attribute (colour, clothing, material) \
on the wrong object, an object in the wrong place, a region that ignored its prompt, seams or \
a scene that falls apart.
2. If nothing important is off, answer "done": true and "plan": null.
3. Otherwise answer "done": false and a revised plan that should fix it when the picture is \
painted again with the same seed. Keep what works. Useful moves: make a region prompt more \
specific (state the object's attributes again, drop words that belong to another region), \
resize or move regions to where the objects should be, add a region for a missing object, \
remove one that should not be there, add a base prompt when the scene falls apart, or lower \
its ratio when objects bleed into each other.

{_PLAN_SHAPE}

Answer with one JSON object and nothing else: {{"critique": "...", "done": true or false, \
"plan": a plan or null}}. For example:
{json.dumps(_REVIEW_EXAMPLE)}"""

EDIT_INSTRUCTIONS = f"""\
You plan local edits for a regional text-to-image system. A picture is divided into rows, top \
to bottom, and each row into regions, left to right; each region is painted from its own \
prompt. Regions are numbered from 0 in reading order: all regions of the top row from left to \
right, then the next row, and so on.

You receive a picture, an edit instruction (for example "make the cat black" or "put a hat on \
the man"), and usually the plan the picture was painted from. Decide which regions have to be \
repainted to carry out the instruction and write each one's new prompt:
- repaint as few regions as you can; everything outside them stays exactly as it is;
- a new prompt replaces the old one completely, so keep the words about setting, lighting and \
style that the region had, and change only what the instruction asks for;
- if no plan is given, first describe the picture as a plan in "plan": rows and regions that \
follow what is in it, each prompt saying what its region shows now; then choose regions from \
that plan. If a plan is given, set "plan" to null.

{_PLAN_SHAPE}

Answer with one JSON object and nothing else: {{"explanation": "...", "plan": a plan or null, \
"changes": [{{"index": 0, "prompt": "..."}}]}}. For example, for "make the cat black" with a \
plan whose region 1 is a white cat:
{json.dumps(_EDIT_EXAMPLE)}"""


def describe_regions(plan: RegionPlan) -> str:
    """One line per region (index, position as percentages, prompt), so a model can point."""
    lines = []
    for i, (region, (x0, y0, x1, y1)) in enumerate(zip(plan.regions, plan.boxes(), strict=True)):
        lines.append(
            f"region {i}: x {x0:.0%}–{x1:.0%}, y {y0:.0%}–{y1:.0%} (from the top-left): "
            f"{region.prompt}"
        )
    if plan.base_prompt is not None:
        lines.append(f"base prompt (whole picture, ratio {plan.base_ratio:g}): {plan.base_prompt}")
    return "\n".join(lines)


def _plan_json(plan: RegionPlan) -> str:
    return plan.model_dump_json()


def build_review_messages(prompt: str, plan: RegionPlan) -> list[ChatMessage]:
    """The opening messages of a review (the image goes with the user message)."""
    user = (
        f"User prompt: {prompt.strip()}\n\n"
        f"Plan that was painted:\n{_plan_json(plan)}\n\n"
        f"The same plan, region by region:\n{describe_regions(plan)}\n\n"
        "The attached picture is the result. Review it and answer with the JSON object."
    )
    return [
        {"role": "system", "content": REVIEW_INSTRUCTIONS},
        {"role": "user", "content": user},
    ]


def build_edit_messages(instruction: str, plan: RegionPlan | None) -> list[ChatMessage]:
    """The opening messages of an edit request (the image goes with the user message)."""
    if plan is None:
        about = (
            'No plan is known for this picture: describe it as a plan in "plan" first, then '
            "choose regions from it."
        )
    else:
        about = (
            f"Plan the picture was painted from:\n{_plan_json(plan)}\n\n"
            f"The same plan, region by region:\n{describe_regions(plan)}\n\n"
            'Choose regions from this plan and set "plan" to null.'
        )
    user = (
        f"Edit instruction: {instruction.strip()}\n\n{about}\n\n"
        "The attached picture is the one to edit. Answer with the JSON object."
    )
    return [
        {"role": "system", "content": EDIT_INSTRUCTIONS},
        {"role": "user", "content": user},
    ]


def _retry(error: str, structured: bool) -> str:
    # Reviews and edits are JSON even when the server does not enforce a schema.
    return json_retry_message(error)


# --------------------------------------------------------------------------- parsing


def _parse_json(text: str, model: type[M], what: str, fill: Callable[[dict[str, Any]], None]) -> M:
    _, data = reply_json(text)
    if data is None:
        raise PlannerError(f"the reply holds no JSON object; answer with the {what}", raw=text)
    fill(data)
    return validate_reply(data, model, what=what, raw=text)


def parse_review_reply(text: str) -> Review:
    """A reply as a validated :class:`Review`; :class:`PlannerError` (with ``raw``) otherwise.

    A reply that says done is taken as done even if it also carries a plan.
    """

    def fill(data: dict[str, Any]) -> None:
        data.setdefault("critique", "")
        data.setdefault("done", data.get("plan") is None)
        if data.get("done") is True:
            data["plan"] = None

    return _parse_json(text, Review, "review", fill)


def parse_edit_reply(text: str, plan: RegionPlan | None) -> EditPlan:
    """A reply as an :class:`EditPlan` whose ``plan`` is the one its indices refer to.

    Checked against ``plan`` (or the plan the model described when ``plan`` is ``None``): every
    index must name a region of it. :class:`PlannerError` with ``raw`` otherwise.
    """

    def fill(data: dict[str, Any]) -> None:
        data.setdefault("explanation", "")
        if plan is not None:
            if data.get("plan") is not None:
                log.info("ignoring the plan in an edit reply: the image already has one")
            data["plan"] = None

    edit = _parse_json(text, EditPlan, "edit", fill)
    target = plan if plan is not None else edit.plan
    if target is None:
        raise PlannerError(
            'this picture has no plan: describe it as a plan in "plan" (rows and regions with '
            "prompts saying what each region shows), then choose regions from it",
            raw=text,
        )
    n = len(target.regions)
    bad = [c.index for c in edit.changes if c.index >= n]
    if bad:
        raise PlannerError(
            f"region {bad[0]} does not exist: the plan has {n} region{'s' if n != 1 else ''}, "
            f"numbered 0 to {n - 1} in reading order",
            raw=text,
        )
    return edit.model_copy(update={"plan": target})


# --------------------------------------------------------------------------- the protocol


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
