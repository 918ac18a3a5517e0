"""Grid plans: a row of the canvas and the regions it is split into, left to right."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from rpg.layout import check_finite_total
from rpg.lora_spec import LoraInput
from rpg.models.parts import (
    PromptedPart,
    base_weight_field,
    loras_field,
    negative_prompt_field,
    prompt_field,
)
from rpg.models.validation import FROZEN


class Region(PromptedPart):
    """One cell of the canvas and the sub-prompt that is drawn there."""

    _part = "region"

    prompt: str = prompt_field("for this region")
    width: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="Relative width of the region within its row; widths in a row are normalised.",
    )
    negative_prompt: str | None = negative_prompt_field("region")
    base_weight: float | None = base_weight_field("region")
    loras: tuple[LoraInput, ...] = loras_field("region")


class Row(BaseModel):
    """A horizontal band of the canvas, split left to right into regions."""

    model_config = FROZEN

    height: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="Relative height of the row; heights of all rows are normalised.",
    )
    regions: tuple[Region, ...] = Field(
        min_length=1, description="The regions of this row, from left to right."
    )

    @model_validator(mode="after")
    def _finite_total_width(self) -> Row:
        check_finite_total([r.width for r in self.regions], "region widths of a row")
        return self
