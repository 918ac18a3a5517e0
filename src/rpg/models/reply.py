"""The planner's reading of a prompt (its recaption and entities) and what a planner returns."""

from __future__ import annotations

from pydantic import BaseModel, Field

from rpg.models.plan import RegionPlan
from rpg.models.validation import FROZEN


class Entity(BaseModel):
    """One key entity of a prompt and the attributes that belong to it."""

    model_config = FROZEN

    name: str = Field(description="The entity, as a short noun phrase, e.g. 'girl' or 'red apple'.")
    attributes: tuple[str, ...] = Field(
        default=(),
        description="Attributes of this entity only, e.g. ['silver braid', 'blue dress'].",
    )


class Recaption(BaseModel):
    """The planner's reading of the prompt: what it says, and who is in it."""

    model_config = FROZEN

    original_prompt: str = Field(description="The user's prompt, unchanged.")
    recaption: str = Field(
        default="",
        description="A richer rewrite of the whole prompt, keeping every entity and attribute.",
    )
    entities: tuple[Entity, ...] = Field(
        default=(), description="The key entities of the prompt, with their attributes."
    )


class PlanResult(BaseModel):
    """What a planner returns: its recaption, the plan, and how it got there."""

    model_config = FROZEN

    recaption: Recaption = Field(description="The recaptioned prompt and its entities.")
    plan: RegionPlan = Field(description="The region plan.")
    raw: str = Field(default="", description="The model's raw reply, for debugging.")
    planner: str = Field(default="", description="Identifier of the planner that made the plan.")
    seconds: float = Field(default=0.0, ge=0, description="Wall time spent planning.")
