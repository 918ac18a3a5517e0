"""The JSON bodies the editor's API accepts, as pydantic models, and the size limits.

Every POST body is validated by one of these models before a handler looks at it, so a wrong
type anywhere (``{"planner": ["a"]}``, ``row: 1e400``, ``base_ratio: [1]``) is a 422 that names
the field, never a 500 from deep inside. The render settings (``request``) are passed on as they
are to :class:`~rpg.models.GenerationRequest`, which knows its own fields (and the options each
backbone adds); only their sizes are checked here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rpg.layout import MAX_SIDE
from rpg.models import MAX_PROMPT_CHARS, LayerMask, RegionPlan

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_MASK_UPLOAD_BYTES",
    "MAX_REFINE_ROUNDS",
    "MAX_TEXT_CHARS",
    "MAX_UPLOAD_BYTES",
    "EditBody",
    "LayerEditBody",
    "PlanBody",
    "PlanCheckBody",
    "PlanTextBody",
    "RefineBody",
    "RenderBody",
    "TextTooLong",
    "check_text_sizes",
]

#: Largest JSON body (a plan with dozens of regions and long prompts is a few tens of KiB).
MAX_JSON_BYTES = 1 << 20
#: Largest PNG /api/reopen accepts (a 2048² RGBA PNG with embedded control images fits).
MAX_UPLOAD_BYTES = 64 << 20
#: Longest text in any field: a prompt, a region prompt, a negative prompt, a name.
MAX_TEXT_CHARS = MAX_PROMPT_CHARS
#: Largest mask image ``/api/mask`` accepts (it is stored in the plan far smaller: grayscale).
MAX_MASK_UPLOAD_BYTES = 16 << 20
#: Most review-and-re-render rounds one Refine may ask for.
MAX_REFINE_ROUNDS = 10
#: Deepest nesting of JSON arrays and objects a body may have.
MAX_DEPTH = 32


#: What an uploaded init image's id looks like (see :mod:`rpg.ui.init_images`).
INIT_ID_PATTERN = r"^init-[0-9a-f]{16}$"


class TextTooLong(ValueError):
    """A text field is longer than :data:`MAX_TEXT_CHARS`; answered with 413."""

    def __init__(self, where: str, length: int) -> None:
        super().__init__(
            f"{where} is {length} characters long; the limit is {MAX_TEXT_CHARS} characters "
            "for a prompt or any other text field: shorten it"
        )
        self.field = where


def check_text_sizes(data: Any, where: str = "", depth: int = 0) -> None:
    """Refuse any string longer than :data:`MAX_TEXT_CHARS` and nesting deeper than 32.

    Walks the whole body, so a limit applies to every prompt wherever it sits (request, plan,
    region, layer) without listing the fields. A layer mask's PNG (``...mask.png``, base64) is
    no prompt: the plan model bounds its size (the plan's JSON limit), and the body limit
    bounds everything.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"{where or 'the body'} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(data, str):
        is_mask = where == "mask.png" or where.endswith(".mask.png")
        if len(data) > MAX_TEXT_CHARS and not is_mask:
            raise TextTooLong(where or "the body", len(data))
    elif isinstance(data, dict):
        for key, value in data.items():
            check_text_sizes(value, f"{where}.{key}" if where else str(key), depth + 1)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_text_sizes(value, f"{where}.{i}" if where else str(i), depth + 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanBody(_Body):
    """``POST /api/plan``: ask a planner for a plan."""

    prompt: str = Field(description="the user's prompt; must not be blank")
    planner: str | None = Field(None, description="registered planner name; default: the app's")


class _Size(_Body):
    """The image size the page will render, for the warnings about layers that paint nothing."""

    width: int | None = Field(None, ge=8, le=MAX_SIDE, description="image width in pixels")
    height: int | None = Field(None, ge=8, le=MAX_SIDE, description="image height in pixels")


class PlanCheckBody(_Size):
    """``POST /api/plan/check``: validate a plan edited on the canvas."""

    plan: RegionPlan | None = Field(None, description="the plan to check")


class EditBody(_Body):
    """``POST /api/plan/edit``: apply one of :data:`rpg.ui.edits.EDITS` at a region."""

    plan: RegionPlan | None = Field(None, description="the plan to edit")
    edit: str = Field(description="the edit's name, a key of rpg.ui.edits.EDITS")
    row: int = Field(0, ge=0, description="row index, top to bottom, from 0")
    col: int = Field(0, ge=0, description="region index in the row, left to right, from 0")


class LayerEditBody(_Size):
    """``POST /api/plan/layer``: apply one of :data:`rpg.ui.edits.LAYER_EDITS` to a layer."""

    plan: RegionPlan | None = Field(
        None, description="the plan to edit; none: add_layer starts a canvas plan"
    )
    edit: str = Field(description="the edit's name, a key of rpg.ui.edits.LAYER_EDITS")
    layer: int = Field(0, ge=0, description="layer index, from 0 at the bottom")
    box: tuple[float, float, float, float] | None = Field(
        None, description="x0, y0, x1, y1 in fractions of the canvas (add_layer, set_box)"
    )
    mask: LayerMask | None = Field(None, description="the layer's new mask (set_mask)")
    base_prompt: str | None = Field(
        None, description="background prompt of a new canvas plan (add_layer without a plan)"
    )


class PlanTextBody(_Body):
    """``POST /api/plan/text``: a plan from the split-ratio and BREAK-prompt text fields."""

    split_ratio: str = Field("", description="the split ratio, e.g. '1,1;2,1,1'")
    prompts: str = Field("", description="regional prompts separated by BREAK")
    base_prompt: str | None = Field(None, description="prompt shared by every region")
    base_ratio: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="weight of the base prompt, 0 to 1"
    )
    plan: RegionPlan | None = Field(
        None, description="the previous plan, whose per-region settings are kept"
    )

    @field_validator("base_ratio", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any) -> Any:
        """The page sends the text field as it is: empty means the default ratio."""
        if isinstance(value, str) and not value.strip():
            return None
        return value


class RenderBody(_Body):
    """``POST /api/generate``: render ``request`` with ``plan`` (or let the planner plan)."""

    request: dict[str, Any] = Field(
        description="GenerationRequest fields; empty values take the defaults"
    )
    plan: RegionPlan | None = Field(None, description="the plan to render; none: plan first")
    init_image_id: str | None = Field(
        None,
        pattern=INIT_ID_PATTERN,
        description="img2img: the id POST /api/init-image gave for the picture to render over",
    )


class RefineBody(RenderBody):
    """``POST /api/refine``: render, review and re-render ``rounds`` times."""

    rounds: int = Field(1, ge=1, le=MAX_REFINE_ROUNDS, description="review rounds")


class CancelBody(_Body):
    """``POST /api/jobs/{id}/cancel``: an empty object."""
