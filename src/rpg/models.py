"""Typed core of rpg: plans, recaptions, requests and results.

The models are frozen pydantic v2 models, and frozen all the way down: their sequences are
tuples, so a plan or request cannot change after it was validated (JSON still holds arrays, and
lists are accepted on input). Their field descriptions are the reference documentation and end
up in the JSON Schema that planners hand to language models, so they are written for both
readers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rpg.errors import SplitRatioError
from rpg.layout import (
    MAX_SIDE,
    check_finite_total,
    format_split_ratio,
    parse_split_ratio,
    split_prompts,
)

__all__ = [
    "DEFAULT_BASE_RATIO",
    "DEFAULT_HIRES_STRENGTH",
    "DEFAULT_STRENGTH",
    "MAX_CONTROL_SCALE",
    "MAX_PLAN_JSON_BYTES",
    "MAX_PROMPT_CHARS",
    "MAX_REQUEST_JSON_BYTES",
    "MAX_SEED",
    "ControlInput",
    "Entity",
    "GenerationRequest",
    "GenerationResult",
    "HiresFix",
    "PlanResult",
    "Recaption",
    "Region",
    "RegionPlan",
    "Row",
    "whole_image_text",
]

#: Base-prompt weight used when a plan has a base prompt and names no ratio.
DEFAULT_BASE_RATIO = 0.3

#: Largest ControlNet conditioning scale a request accepts (typical values are 0.3 to 2).
MAX_CONTROL_SCALE = 10.0

#: Largest seed: torch generators take unsigned 64-bit seeds, and image ``i`` uses ``seed + i``.
MAX_SEED = 2**64 - 1

#: Longest prompt (user prompt, negative prompt, region and base prompts), in characters.
MAX_PROMPT_CHARS = 10_000
#: Largest plan, as JSON in UTF-8 bytes. With :data:`MAX_REQUEST_JSON_BYTES` it bounds what a PNG
#: saved by rpg carries (request + plan, see :mod:`rpg.metadata`) below Pillow's 1 MiB limit on
#: one text chunk, so every PNG rpg writes, rpg (and any Pillow) reads back.
MAX_PLAN_JSON_BYTES = 128 * 1024
#: Largest request (plan included), as JSON in UTF-8 bytes.
MAX_REQUEST_JSON_BYTES = 256 * 1024

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _check_json_size(model: BaseModel, limit: int, what: str) -> None:
    """A model whose JSON would exceed ``limit`` bytes is refused, naming the limit."""
    size = len(model.model_dump_json().encode("utf-8"))
    if size > limit:
        raise ValueError(
            f"{what} is {size / 1024:.0f} KiB as JSON; the most rpg accepts is {limit // 1024} KiB "
            "(so that the PNG it is saved in can be read back)"
        )


def _non_blank(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


class Entity(BaseModel):
    """One key entity of a prompt and the attributes that belong to it."""

    model_config = _FROZEN

    name: str = Field(description="The entity, as a short noun phrase, e.g. 'girl' or 'red apple'.")
    attributes: tuple[str, ...] = Field(
        default=(),
        description="Attributes of this entity only, e.g. ['silver braid', 'blue dress'].",
    )


class Recaption(BaseModel):
    """The planner's reading of the prompt: what it says, and who is in it."""

    model_config = _FROZEN

    original_prompt: str = Field(description="The user's prompt, unchanged.")
    recaption: str = Field(
        default="",
        description="A richer rewrite of the whole prompt, keeping every entity and attribute.",
    )
    entities: tuple[Entity, ...] = Field(
        default=(), description="The key entities of the prompt, with their attributes."
    )


class Region(BaseModel):
    """One cell of the canvas and the sub-prompt that is drawn there."""

    model_config = _FROZEN

    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="The sub-prompt for this region: its entity with all of that entity's "
        "attributes, plus the shared setting and style.",
    )
    width: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="Relative width of the region within its row; widths in a row are normalised.",
    )
    negative_prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="A negative prompt for this region only; null uses the request's negative "
        "prompt.",
    )
    base_weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="How much of the base prompt is blended into this region (0 to 1); null uses "
        "the plan's base_ratio.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        return _non_blank(v, "a region prompt")


class Row(BaseModel):
    """A horizontal band of the canvas, split left to right into regions."""

    model_config = _FROZEN

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


class RegionPlan(BaseModel):
    """How the canvas is split: rows top to bottom, regions left to right, and a base prompt."""

    model_config = _FROZEN

    rows: tuple[Row, ...] = Field(
        min_length=1, description="The rows of the canvas, from top to bottom."
    )
    base_prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="A prompt for the whole image, blended into every region; use it when the "
        "entities share a class or a scene. Null for none.",
    )
    base_ratio: float = Field(
        default=DEFAULT_BASE_RATIO,
        ge=0,
        le=1,
        description="Weight of the base prompt in each region (0 to 1); ignored without a base "
        "prompt.",
    )

    @field_validator("base_prompt")
    @classmethod
    def _base_not_blank(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        return v or None

    @model_validator(mode="after")
    def _finite_total_height(self) -> RegionPlan:
        check_finite_total([row.height for row in self.rows], "row heights")
        return self

    @model_validator(mode="after")
    def _bounded_size(self) -> RegionPlan:
        _check_json_size(self, MAX_PLAN_JSON_BYTES, "the plan")
        return self

    @property
    def regions(self) -> list[Region]:
        """All regions in reading order: rows top to bottom, regions left to right."""
        return [region for row in self.rows for region in row.regions]

    @property
    def prompts(self) -> list[str]:
        """The regional prompts in reading order."""
        return [region.prompt for region in self.regions]

    def base_weights(self) -> list[float]:
        """The effective base weight of every region (0 for all when there is no base prompt)."""
        if self.base_prompt is None:
            return [0.0] * len(self.regions)
        return [self.base_ratio if r.base_weight is None else r.base_weight for r in self.regions]

    def split_rows(self) -> list[tuple[float, list[float]]]:
        """The plan's geometry as ``[(height, [width, ...]), ...]`` relative weights."""
        return [(row.height, [r.width for r in row.regions]) for row in self.rows]

    def boxes(self) -> list[tuple[float, float, float, float]]:
        """Every region's box ``(x0, y0, x1, y1)`` as fractions of the canvas, in reading order."""
        total_h = sum(row.height for row in self.rows)
        boxes = []
        y = 0.0
        for row in self.rows:
            y1 = y + row.height / total_h
            total_w = sum(r.width for r in row.regions)
            x = 0.0
            for region in row.regions:
                x1 = x + region.width / total_w
                boxes.append((x, y, x1, y1))
                x = x1
            y = y1
        return boxes

    @classmethod
    def from_split_ratio(
        cls,
        split_ratio: str,
        prompts: str | Sequence[str],
        *,
        base_prompt: str | None = None,
        base_ratio: float = DEFAULT_BASE_RATIO,
        use_base: bool = False,
    ) -> RegionPlan:
        """Build a plan from the paper's split-ratio string and its prompts.

        ``prompts`` is a list or one ``BREAK``-separated string. With ``use_base=True`` the first
        prompt is the base prompt, as in the paper's format.
        """
        rows = parse_split_ratio(split_ratio)
        items = split_prompts(prompts) if isinstance(prompts, str) else [p.strip() for p in prompts]
        if use_base:
            if base_prompt is not None:
                raise SplitRatioError("give either base_prompt or use_base=True, not both")
            if not items:
                raise SplitRatioError("use_base=True needs the base prompt as the first prompt")
            base_prompt, items = items[0], items[1:]
        n_regions = sum(len(widths) for _, widths in rows)
        if n_regions != len(items):
            raise SplitRatioError(
                f"split ratio {split_ratio!r} has {n_regions} region"
                f"{'s' if n_regions != 1 else ''} but {len(items)} prompt"
                f"{'s were' if len(items) != 1 else ' was'} given"
            )
        for i, p in enumerate(items):
            if not p:
                raise SplitRatioError(f"regional prompt {i + 1} of {len(items)} is empty")
        it = iter(items)
        return cls(
            rows=[
                Row(height=h, regions=[Region(prompt=next(it), width=w) for w in widths])
                for h, widths in rows
            ],
            base_prompt=base_prompt,
            base_ratio=base_ratio,
        )

    def to_split_ratio(self) -> str:
        """The plan's geometry in the split-ratio grammar (prompts are not part of it)."""
        return format_split_ratio(self.split_rows())

    def to_prompt_text(self, *, include_base: bool = True) -> str:
        """The prompts joined by ``BREAK``, base prompt first when there is one."""
        items = self.prompts
        if include_base and self.base_prompt is not None:
            items = [self.base_prompt, *items]
        return " BREAK ".join(items)

    def with_base_ratio(self, base_ratio: float) -> RegionPlan:
        """A copy of the plan with another base ratio (validated)."""
        return RegionPlan.model_validate({**self.model_dump(), "base_ratio": base_ratio})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RegionPlan:
        """Read a plan from a JSON file holding a ``RegionPlan`` or a whole ``PlanResult``.

        Both shapes are accepted because ``rpg plan --json`` writes a ``PlanResult``.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file not found: {p}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and "plan" in data and "rows" not in data:
            data = data["plan"]
        return cls.model_validate(data)

    @classmethod
    def single(cls, prompt: str) -> RegionPlan:
        """A plan of one full-canvas region and no base prompt."""
        return cls(rows=[Row(regions=[Region(prompt=prompt)])])


class PlanResult(BaseModel):
    """What a planner returns: its recaption, the plan, and how it got there."""

    model_config = _FROZEN

    recaption: Recaption = Field(description="The recaptioned prompt and its entities.")
    plan: RegionPlan = Field(description="The region plan.")
    raw: str = Field(default="", description="The model's raw reply, for debugging.")
    planner: str = Field(default="", description="Identifier of the planner that made the plan.")
    seconds: float = Field(default=0.0, ge=0, description="Wall time spent planning.")


class ControlInput(BaseModel):
    """One ControlNet and the control image it was given, recorded so a render can be repeated.

    The image itself is not part of the request (it lives in a file, or embedded in the PNG that
    :func:`rpg.metadata.save_png` writes); ``sha256`` identifies its pixels, so a re-render can
    tell whether it is using the same control image.
    """

    model_config = _FROZEN

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
        return _non_blank(v, "the ControlNet name")

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


def whole_image_text(plan: RegionPlan, prompt: str | None = None) -> str:
    """The one text that describes the whole image: the plan's base prompt, else the user's
    whole ``prompt``, else the region prompts joined in reading order (each once).

    What a model's global conditioning (SDXL's and FLUX/SD3's pooled embedding) and the
    non-regional calls of MM-DiT models read, and the prompt of a request made from a plan alone.
    """
    if plan.base_prompt is not None:
        return plan.base_prompt
    if prompt is not None and prompt.strip():
        return prompt
    return ", ".join(dict.fromkeys(plan.prompts))


# --------------------------------------------------------------------------- img2img, hires fix
#: The strength a request with an init image and no strength gets (A1111's default denoising).
DEFAULT_STRENGTH = 0.75
#: The hires pass's strength when a request names none.
DEFAULT_HIRES_STRENGTH = 0.5
#: The largest hires scale: past it the second pass is mostly invented detail.
MAX_HIRES_SCALE = 4.0


class HiresFix(BaseModel):
    """A second, larger pass: render at the request's size, upscale the picture, refine it.

    The refining pass is the family's stock img2img pipeline with the same plan (its layout
    recomputed at the larger latent grid), the same seed and the same settings; see
    :mod:`rpg.hires`.
    """

    model_config = _FROZEN

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

    model_config = _FROZEN

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
        "SDXL, the pipeline's own flow-matching scheduler for FLUX and SD3).",
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
        "MM-DiT families), by name; empty uses the family's defaults. The result records them "
        "as validated against the loaded model.",
    )
    controls: tuple[ControlInput, ...] = Field(
        default=(),
        description="ControlNet inputs, one per ControlNet in order; empty for a plain render.",
    )
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
        return _non_blank(v, "the prompt")

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
        _check_json_size(self, MAX_REQUEST_JSON_BYTES, "the request")
        return self

    def effective_plan(self) -> RegionPlan | None:
        """The plan with the request's base-ratio override applied."""
        if self.plan is None or self.base_ratio is None:
            return self.plan
        return self.plan.with_base_ratio(self.base_ratio)


@dataclass(frozen=True)
class GenerationResult:
    """Images and everything that made them.

    A plain dataclass rather than a pydantic model: the images are PIL images, arrays, tensors
    or latents, not data to validate or serialise. What is data (``plan``, ``request``,
    ``plan_result``) is pydantic and serialises on its own; :meth:`save` writes an image with
    it.
    """

    #: The generated images, one per ``request.num_images``: ``PIL.Image.Image`` (default), or
    #: arrays / tensors / latents when ``output_type`` asked for them.
    images: list[Any]
    #: The plan that was rendered.
    plan: RegionPlan
    #: The request with everything that was used filled in (plan, seed, size, model, controls):
    #: rendering it again gives the same pixels.
    request: GenerationRequest
    #: The planner's output, when a planner made the plan.
    plan_result: PlanResult | None = None
    #: Seconds spent in ``plan``, ``encode``, ``denoise`` and ``decode``, and ``total``.
    timings: dict[str, float] = field(default_factory=dict)
    #: The control images used (PIL images), one per ``request.controls`` entry; ``None`` where
    #: the image was an array or tensor. :meth:`save` embeds them so the PNG re-renders
    #: without the original files.
    control_images: list[Any] = field(default_factory=list)
    #: The init image an img2img render started from (PIL, at the render's size); :meth:`save`
    #: embeds it so the PNG re-renders without the original file. ``None`` otherwise.
    init_image: Any = None
    #: The pipeline's safety checker verdict per image, when it has a safety checker (a
    #: flagged image is black, as the stock pipeline makes it); ``None`` without one.
    nsfw_content_detected: list[bool] | None = None

    def save(self, path: str | os.PathLike[str], *, index: int = 0) -> Path:
        """Write image ``index`` as a PNG carrying its request and plan (and control images).

        The stored request is the one that renders this image on its own (its seed is
        ``request.seed + index``), so ``rpg generate --from PATH`` re-renders it. Always PNG:
        a path with another suffix is refused rather than given PNG bytes under that name.
        """
        from PIL import Image

        from rpg.metadata import save_png

        target = Path(path)
        if target.suffix.lower() != ".png":
            raise ValueError(
                f"{target}: GenerationResult.save writes PNG files (the metadata lives in PNG "
                "text chunks); use a .png name, or convert result.images[...] yourself"
            )
        if not 0 <= index < len(self.images):
            raise IndexError(f"image index {index} out of range for {len(self.images)} images")
        image = self.images[index]
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"image {index} is a {type(image).__name__}, not a PIL image; render with "
                "output_type='pil' to save it"
            )
        return save_png(
            image,
            target,
            self.request,
            self.plan,
            index=index,
            control_images=self.control_images or None,
            init_image=self.init_image,
        )
