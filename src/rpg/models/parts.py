"""What a grid region and a canvas layer share: the one home of their four common fields.

A :class:`~rpg.models.Region` and a :class:`~rpg.models.Layer` both carry a sub-prompt, its own
negative prompt, its base weight and its LoRAs, described and validated the same way. The fields
are made here and declared in each model (not inherited) because pydantic orders a model's
fields parents first, and the order is the order of the plan's JSON and of the JSON Schema the
planners send: a region's ``width`` sits between ``prompt`` and ``negative_prompt``, a layer's
``box`` and ``mask`` before ``loras``, as in every plan written so far.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from rpg.lora_spec import coerce_loras
from rpg.models.limits import MAX_PROMPT_CHARS
from rpg.models.validation import FROZEN, non_blank


def prompt_field(where: str) -> Any:
    """The sub-prompt; ``where`` completes "The sub-prompt ..." (e.g. "for this region")."""
    return Field(
        max_length=MAX_PROMPT_CHARS,
        description=f"The sub-prompt {where}: its entity with all of that entity's "
        "attributes, plus the shared setting and style.",
    )


def negative_prompt_field(part: str) -> Any:
    """The part's own negative prompt (``part``: "region" or "layer")."""
    return Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description=f"A negative prompt for this {part} only; null uses the request's negative "
        "prompt.",
    )


def base_weight_field(part: str) -> Any:
    """How much of the base prompt the part blends in; null: the plan's ``base_ratio``."""
    return Field(
        default=None,
        ge=0,
        le=1,
        description=f"How much of the base prompt is blended into this {part} (0 to 1); null "
        "uses the plan's base_ratio.",
    )


def loras_field(part: str) -> Any:
    """LoRAs acting on the part's text only; left out of the JSON when empty, so plans read as
    before LoRAs existed."""
    return Field(
        default=(),
        exclude_if=lambda v: not v,
        description=f"LoRA adapters that act on this {part}'s prompt only: the keys and values "
        "its text gives in cross-attention (see rpg.lora). Empty for none.",
    )


class PromptedPart(BaseModel):
    """Base of :class:`~rpg.models.Region` and :class:`~rpg.models.Layer`: their validators.

    It declares no fields (see the module docstring); a subclass declares ``prompt`` and
    ``loras`` with the functions above and names itself in ``_part`` for error messages.
    """

    model_config = FROZEN

    #: What the subclass is called in messages ("region", "layer").
    _part: ClassVar[str]

    @field_validator("loras", mode="before", check_fields=False)
    @classmethod
    def _coerce_loras(cls, v: Any) -> Any:
        return coerce_loras(v)

    @field_validator("prompt", check_fields=False)
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        return non_blank(v, f"a {cls._part} prompt")
