"""What a multimodal planner answers: the reply models of a review and of an edit, and the
parsing that turns a reply into one (or a :class:`~rpg.errors.PlannerError` carrying the reply).

Each model is also the JSON Schema sent as the structured-output format (:data:`REVIEW_FORMAT`,
:data:`EDIT_FORMAT`); a revised or described plan is validated like any plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rpg.errors import PlannerError
from rpg.models import RegionPlan
from rpg.planners.parsing import reply_json, validate_reply
from rpg.planners.schema import ReplyFormat

__all__ = [
    "EDIT_FORMAT",
    "REVIEW_FORMAT",
    "EditPlan",
    "RegionChange",
    "Review",
    "parse_edit_reply",
    "parse_review_reply",
]

log = logging.getLogger("rpg.planners")

_STRICT = ConfigDict(frozen=True, extra="forbid")
M = TypeVar("M", bound=BaseModel)


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
