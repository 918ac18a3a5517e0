"""Regional edit: repaint only the regions an instruction is about, keep every other pixel.

1. The plan: the one given, else the one in the image's rpg metadata, else none — then the
   multimodal planner describes the image as a plan first.
2. The planner (:meth:`rpg.planners.feedback.MultimodalPlanner.plan_edit`) picks the regions to
   change and writes their new prompts.
3. The family's stock inpainting pipeline (SD, SDXL, FLUX.1 inpaint or fill, SD3, FLUX.2 klein:
   :meth:`~rpg.backbones.base.Backbone.inpaint_backbone`), built from the loaded pipeline's own
   modules (no weights are copied), renders through the same route as ``generate``
   (:mod:`rpg.route`) with the edited plan and a mask over the changed regions' boxes. A
   regular UNet or transformer runs in the pipeline's latent-blending mode; an inpainting UNet
   (9 channels) or a FLUX fill transformer in its native mode.
4. The result is composited with a feathered version of that mask, so every pixel where the
   mask is 0 equals the input image exactly (the VAE round trip would change them otherwise).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rpg.errors import ConfigurationError
from rpg.metadata import PNG_KEY, MetadataError, load_request
from rpg.models import GenerationRequest, RegionPlan, whole_image_text
from rpg.planners.base import Planner
from rpg.planners.feedback import EditPlan
from rpg.refine import resolve_planner
from rpg.route import render_request

if TYPE_CHECKING:
    from rpg.backbones.base import Backbone
    from rpg.orchestrator import RPG

__all__ = ["EditResult", "edit", "inpaint_pipeline", "read_image", "region_mask"]


@dataclass(frozen=True)
class EditResult:
    """The edited image and everything that made it."""

    #: The edited image, RGB, the size of the input.
    image: Image.Image
    #: The compositing mask ("L"): 255 repainted, 0 kept exactly, feathered in between.
    mask: Image.Image
    #: The planner's decision; its ``plan`` is the plan before the edit.
    edit: EditPlan
    #: The plan after the edit (saved into the output's metadata, so edits can be chained).
    plan: RegionPlan
    #: Prompt, edited plan, seed, size and settings, as written into a saved PNG.
    request: GenerationRequest
    timings: dict[str, float] = field(default_factory=dict)


def read_image(
    image: Image.Image | str | os.PathLike[str],
) -> tuple[Image.Image, GenerationRequest | None]:
    """The image (RGB) and the request in its rpg metadata, or ``None`` for a plain image."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            request: GenerationRequest | None = load_request(path)
        except MetadataError:
            request = None
        with Image.open(path) as opened:
            return opened.convert("RGB"), request
    raw = image.info.get(PNG_KEY)
    request = None
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
            request = GenerationRequest.model_validate(data["request"])
            if request.plan is None and data.get("plan") is not None:
                request = request.model_copy(
                    update={"plan": RegionPlan.model_validate(data["plan"])}
                )
        except (ValueError, KeyError, TypeError):
            request = None
    return image.convert("RGB"), request


def region_mask(
    plan: RegionPlan, indices: list[int], size: tuple[int, int], *, feather: float = 0
) -> Image.Image:
    """An "L" mask of ``size`` over the boxes of regions ``indices``, feathered outwards.

    With ``feather`` > 0 each box grows by ``feather`` pixels and the edge is blurred over
    that width, so a box is fully covered and the blend fades outside it; pixels farther
    away are exactly 0.
    """
    width, height = size
    grow = max(0.0, feather)
    # Draw on a margin so that a box touching the canvas edge stays solid after the blur.
    pad = int(np.ceil(2 * grow)) + 1 if grow else 0
    canvas = Image.new("L", (width + 2 * pad, height + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    boxes = plan.boxes()

    def edge(lo: float, hi: float, extent: int) -> tuple[int, int]:
        a = 0 if lo <= 0 else round(lo * extent - grow) + pad
        b = extent + 2 * pad if hi >= 1 else round(hi * extent + grow) + pad
        return max(0, a), min(extent + 2 * pad, b)

    for i in indices:
        x0, y0, x1, y1 = boxes[i]
        left, right = edge(x0, x1, width)
        top, bottom = edge(y0, y1, height)
        if right > left and bottom > top:
            draw.rectangle((left, top, right - 1, bottom - 1), fill=255)
    if grow:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=grow / 3))
    return canvas.crop((pad, pad, pad + width, pad + height))


def inpaint_pipeline(backbone: Backbone) -> Any:
    """The stock inpainting pipeline sharing ``backbone``'s modules (same device and dtype);
    see :meth:`~rpg.backbones.base.Backbone.inpaint_backbone`."""
    return backbone.inpaint_backbone().pipe


def _composite(source: Image.Image, painted: Image.Image, mask: Image.Image) -> Image.Image:
    src = np.asarray(source, dtype=np.float32)
    new = np.asarray(painted.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    out = np.rint(m * new + (1.0 - m) * src).clip(0, 255).astype(np.uint8)
    keep = np.asarray(mask) == 0
    out[keep] = np.asarray(source)[keep]  # exact, whatever the arithmetic did
    return Image.fromarray(out, "RGB")


def edit(
    rpg: RPG,
    image: Image.Image | str | os.PathLike[str],
    instruction: str,
    *,
    plan: RegionPlan | None = None,
    prompt: str | None = None,
    planner: str | Planner | None = None,
    seed: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    scheduler: str | None = None,
    strength: float = 1.0,
    feather: float | None = None,
    **pipeline_kwargs: Any,
) -> EditResult:
    """Carry out ``instruction`` on ``image`` by repainting only the regions it concerns.

    ``image`` is a path or a PIL image; its rpg metadata, if any, supplies the plan, prompt and
    settings (explicit arguments win). ``planner`` must be multimodal (default: ``rpg``'s).
    ``strength`` is how much of the masked area is re-noised (1 repaints it from scratch).
    ``feather`` is the width in pixels of the soft mask edge (default: 3% of the shorter side).
    ``pipeline_kwargs`` go to the inpainting pipeline call.
    """
    if not instruction or not instruction.strip():
        raise ConfigurationError("the edit instruction is empty; say what to change")
    if not 0 < strength <= 1:
        raise ConfigurationError(f"strength must be in (0, 1], got {strength}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    # The family's inpainting pipeline first: a family without one is refused before any
    # planner call or encoding.
    painter = rpg.backbone.inpaint_backbone()
    source, stored = read_image(image)
    reviewer = resolve_planner(rpg, planner)
    factor = painter.latent_factor
    width, height = source.size
    work_w, work_h = width // factor * factor, height // factor * factor
    if work_w < factor or work_h < factor:
        raise ConfigurationError(f"the image is {width}x{height}; it must be at least {factor}px")
    refusal = painter.edit_refusal(width, height, pipeline_kwargs)
    if refusal is not None:
        raise ConfigurationError(refusal)

    base = stored or GenerationRequest(prompt=prompt or instruction)
    current = plan if plan is not None else base.effective_plan()
    progress = rpg.progress
    progress.start(steps if steps is not None else base.steps)
    progress.stage("plan")

    t = time.perf_counter()
    decision = reviewer.plan_edit(instruction, source, current)
    new_plan = decision.edited_plan()
    timings["plan"] = time.perf_counter() - t

    request = GenerationRequest.model_validate(
        {
            **base.model_dump(),
            "prompt": prompt or (base.prompt if stored else whole_image_text(new_plan)),
            "plan": new_plan.model_dump(),
            "base_ratio": None,
            "planner": None,
            "controls": [],  # inpainting runs without the source's ControlNet
            # the inpainting pipeline takes the source itself; no img2img or hires pass
            "init_image": None,
            "init_image_sha256": None,
            "strength": None,
            "hires": None,
            "model": rpg.model or base.model,
            "width": work_w,
            "height": work_h,
            "num_images": 1,
            **{
                k: v
                for k, v in (
                    ("seed", seed),
                    ("steps", steps),
                    ("guidance_scale", guidance_scale),
                    ("negative_prompt", negative_prompt),
                    ("scheduler", scheduler),
                )
                if v is not None
            },
        }
    )
    if request.seed is None:
        request = request.model_copy(update={"seed": random.SystemRandom().randrange(2**31)})

    edge = max(1.0, 0.03 * min(width, height)) if feather is None else feather
    mask = region_mask(new_plan, decision.indices, (width, height), feather=edge)
    work_image = source if (work_w, work_h) == (width, height) else source.resize((work_w, work_h))
    work_mask = mask if (work_w, work_h) == (width, height) else mask.resize((work_w, work_h))

    callback = pipeline_kwargs.pop("callback_on_step_end", None)
    routed = render_request(
        painter,
        request,
        progress=progress,
        pipeline_kwargs={
            **pipeline_kwargs,
            "image": work_image,
            "mask_image": work_mask,
            "strength": strength,
        },
        output_type="pil",
        callback_on_step_end=callback,
    )
    timings.update(routed.timings)
    request = routed.request
    decode_seconds = timings["decode"]

    t = time.perf_counter()
    (painted,) = routed.rendered.images
    if painted.size != (width, height):
        painted = painted.resize((width, height), Image.Resampling.LANCZOS)
    result = _composite(source, painted, mask)
    timings["decode"] = decode_seconds + time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    progress.finish()
    return EditResult(
        image=result,
        mask=mask,
        edit=decision,
        plan=new_plan,
        request=request,
        timings=timings,
    )
