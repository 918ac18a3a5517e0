"""A request: everything needed to render one prompt (its ControlNet inputs and hires pass
included), and how requests written by rpg 0.1 still load."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from rpg.layout import MAX_SIDE
from rpg.lora_spec import LoraInput, coerce_loras
from rpg.models.limits import (
    DEFAULT_HIRES_STRENGTH,
    MAX_CONTROL_SCALE,
    MAX_HIRES_SCALE,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_JSON_BYTES,
    MAX_SEED,
)
from rpg.models.plan import RegionPlan
from rpg.models.validation import FROZEN, check_json_size, non_blank


class ControlInput(BaseModel):
    """One ControlNet and the control image it was given, recorded so a render can be repeated.

    The image itself is not part of the request (it lives in a file, or embedded in the PNG that
    :func:`rpg.metadata.save_png` writes); ``sha256`` identifies its pixels, so a re-render can
    tell whether it is using the same control image.
    """

    model_config = FROZEN

    controlnet: str = Field(
        description="The ControlNet: a hub id, folder, .safetensors/.ckpt file or tiny name "
        "(e.g. 'tiny-controlnet'), as it was loaded.",
    )
    image: str | None = Field(
        default=None,
        description="Path of the control image as it was given (informational; null when the "
        "image was passed as an object).",
    )
    scale: float = Field(
        default=1.0,
        ge=0,
        le=MAX_CONTROL_SCALE,
        description="ControlNet conditioning scale: how strongly the control image steers the "
        "render (0 turns it off).",
    )
    sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 of the control image's pixels (see rpg.metadata.image_sha256); null "
        "when unknown, e.g. a request written by hand.",
    )

    @field_validator("controlnet")
    @classmethod
    def _controlnet_not_blank(cls, v: str) -> str:
        return non_blank(v, "the ControlNet name")

    @field_validator("image")
    @classmethod
    def _image_not_blank(cls, v: str | None) -> str | None:
        if v is None:
            return None
        return v.strip() or None


#: Request fields of rpg 0.1 (commit 0679977) that are family options now (see
#: :mod:`rpg.backbones.options`): a request or PNG written then still loads, these keys moving
#: into ``options`` (values at their old defaults dropped).
LEGACY_REQUEST_OPTIONS: dict[str, Any] = {
    "true_cfg_scale": 1.0,
    "image_attention": "global",
    "regional_steps": 1.0,
    "regional_blocks": 1,
}


class HiresFix(BaseModel):
    """A second, larger pass: render at the request's size, upscale the picture, refine it.

    The refining pass is the family's stock img2img pipeline with the same plan (its layout
    recomputed at the larger latent grid), the same seed and the same settings; see
    :mod:`rpg.hires`.
    """

    model_config = FROZEN

    scale: float = Field(
        gt=1,
        le=MAX_HIRES_SCALE,
        allow_inf_nan=False,
        description="How much larger the final image is than the request's width and height "
        "(both sides; rounded to the model's size step).",
    )
    strength: float = Field(
        default=DEFAULT_HIRES_STRENGTH,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="How much of the upscaled picture the refining pass re-noises (0.3-0.6 keeps "
        "the composition, 1 repaints it).",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Denoising steps of the refining pass before strength (it runs about "
        "steps x strength of them); null uses the request's steps.",
    )

    @model_validator(mode="before")
    @classmethod
    def _scale_alone(cls, data: Any) -> Any:
        """``"hires": 2`` (a batch line, a hand-written request) means ``{"scale": 2}``."""
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"scale": data}
        return data


class GenerationRequest(BaseModel):
    """Everything needed to render one prompt; serialisable, so an image can be re-rendered."""

    model_config = FROZEN

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="The user's prompt.")
    plan: RegionPlan | None = Field(
        default=None, description="A region plan; null asks the planner for one."
    )
    planner: str | None = Field(
        default=None, description="Name of the planner to use when no plan is given."
    )
    model: str | None = Field(
        default=None,
        description="The model that rendered the image, as rpg resolved it: a reserved tiny name, "
        "the absolute path of a folder or checkpoint file, or a hub id pinned to the snapshot that "
        "was loaded ('org/name@commit'); null uses the loaded model.",
    )
    width: int | None = Field(
        default=None,
        ge=8,
        le=MAX_SIDE,
        description="Image width in pixels, a multiple of 8; null uses the model's native size.",
    )
    height: int | None = Field(
        default=None,
        ge=8,
        le=MAX_SIDE,
        description="Image height in pixels, a multiple of 8; null uses the model's native size.",
    )
    steps: int = Field(default=30, ge=1, le=1000, description="Number of denoising steps.")
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Guidance scale; 0 or 1 turns classifier-free guidance off. For FLUX.1 it is "
        "the distilled guidance embedding. null uses the model's default (7 for SD, SDXL and "
        "SD3, 3.5 for FLUX.1, 4 for FLUX.2 klein) and the result records the value used.",
    )
    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="Negative prompt for the whole image."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Random seed (0 to 2**64 - 1); null picks one and records it in the result.",
    )
    num_images: int = Field(default=1, ge=1, le=64, description="Images to generate.")
    scheduler: str | None = Field(
        default=None,
        description="Scheduler name; null uses the model's default (dpm++2m-karras for SD and "
        "SDXL, dpm++2m for those trained to zero terminal SNR, the pipeline's own flow-matching "
        "scheduler for FLUX and SD3).",
    )
    base_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Overrides the plan's base ratio when set.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options the model family owns (its backbone's options model, e.g. "
        "true_cfg_scale for FLUX.1, image_attention / regional_steps / regional_blocks for the "
        "MM-DiT families, image_attention / group_norm / regional_steps for the UNet ones), by "
        "name; empty uses the family's defaults. The result records them as validated against "
        "the loaded model.",
    )
    controls: tuple[ControlInput, ...] = Field(
        default=(),
        description="ControlNet inputs, one per ControlNet in order; empty for a plain render.",
    )
    # --- LoRA (rpg.lora): left out of the JSON when empty, so requests read as before.
    loras: tuple[LoraInput, ...] = Field(
        default=(),
        exclude_if=lambda v: not v,
        description="LoRA adapters for the whole image, in order, each with its scale and the "
        "SHA-256 of its file (recorded at render time); empty renders with the pipeline as it "
        "is. Per-region LoRAs live on the plan's regions.",
    )

    @field_validator("loras", mode="before")
    @classmethod
    def _coerce_loras(cls, v: Any) -> Any:
        return coerce_loras(v)

    # img2img and hires fix (see rpg.img2img, rpg.hires)
    init_image: str | None = Field(
        default=None,
        description="img2img: path of the picture to render over, as given (a saved PNG embeds "
        "the picture itself); null renders from noise unless an image is passed to generate.",
    )
    init_image_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 of the init image's pixels (rpg.metadata.image_sha256), recorded "
        "by the render.",
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="img2img: how much of the init image is re-noised (1 repaints it from "
        "scratch); null uses 0.75 with an init image. Needs an init image.",
    )
    hires: HiresFix | None = Field(
        default=None,
        description="Hires fix: render, upscale by hires.scale, refine with img2img; null renders "
        "once. width and height stay the first pass's size.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        return non_blank(v, "the prompt")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        """Requests written by rpg 0.1 (PNGs, batch files) had the MM-DiT options as fields;
        they move into ``options`` (values at their old defaults are dropped)."""
        if not isinstance(data, dict) or not any(k in data for k in LEGACY_REQUEST_OPTIONS):
            return data
        data = dict(data)
        options = dict(data.get("options") or {})
        for key, default in LEGACY_REQUEST_OPTIONS.items():
            if key in data:
                value = data.pop(key)
                if value != default:
                    options.setdefault(key, value)
        data["options"] = options
        return data

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            lower, upper = v // 8 * 8, v // 8 * 8 + 8
            raise ValueError(f"must be a multiple of 8, got {v} (try {lower or upper} or {upper})")
        return v

    @model_validator(mode="after")
    def _bounded(self) -> GenerationRequest:
        if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
            raise ValueError(
                f"seed {self.seed} with {self.num_images} images needs seeds up to "
                f"{self.seed + self.num_images - 1}; the largest seed is 2**64 - 1 = {MAX_SEED}"
            )
        check_json_size(self, MAX_REQUEST_JSON_BYTES, "the request")
        return self

    def effective_plan(self) -> RegionPlan | None:
        """The plan with the request's base-ratio override applied."""
        if self.plan is None or self.base_ratio is None:
            return self.plan
        return self.plan.with_base_ratio(self.base_ratio)
