"""Regional edit: repaint only the regions an instruction is about, keep every other pixel.

1. The plan: the one given, else the one in the image's rpg metadata, else none — then the
   multimodal planner describes the image as a plan first.
2. The planner (:meth:`rpg.planners.feedback.MultimodalPlanner.plan_edit`) picks the regions to
   change and writes their new prompts.
3. The stock inpainting pipeline (``StableDiffusionInpaintPipeline``, or
   ``StableDiffusionXLInpaintPipeline`` for SDXL), built from the loaded pipeline's own modules
   (no weights are copied), denoises under the regional attention processor with the edited
   plan's packed embeddings and a mask over the changed regions' boxes. A regular 4-channel UNet
   runs in the pipeline's latent-blending mode; a 9-channel inpainting UNet in its native mode.
4. The result is composited with a feathered version of that mask, so every pixel where the
   mask is 0 equals the input image exactly (the VAE round trip would change them otherwise).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from rpg.errors import ConfigurationError
from rpg.metadata import PNG_KEY, MetadataError, load_request
from rpg.models import GenerationRequest, RegionPlan
from rpg.planners.base import Planner
from rpg.planners.feedback import EditPlan
from rpg.progress import step_callback
from rpg.refine import resolve_planner

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
    """The stock inpainting pipeline sharing ``backbone``'s modules (same device and dtype).

    Built with the class constructor rather than ``from_pipe``, which would also cast every
    shared module to one dtype.
    """
    import diffusers

    pipe = backbone.pipe
    is_xl = getattr(pipe, "text_encoder_2", None) is not None
    cls: Any = (
        diffusers.StableDiffusionXLInpaintPipeline
        if is_xl
        else diffusers.StableDiffusionInpaintPipeline
    )
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in pipe.components.items() if k in accepted}
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = components.get("safety_checker") is not None
    if "force_zeros_for_empty_prompt" in accepted:
        components["force_zeros_for_empty_prompt"] = bool(
            getattr(pipe.config, "force_zeros_for_empty_prompt", True)
        )
    if "add_watermarker" in accepted:
        # The inpainting pipeline decodes, so it watermarks exactly when the model's own does.
        components["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    inpaint = cls(**components)
    inpaint.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return inpaint


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
    from rpg.attention.install import regional
    from rpg.backbones.base import Backbone, timed_call

    if not instruction or not instruction.strip():
        raise ConfigurationError("the edit instruction is empty; say what to change")
    if not 0 < strength <= 1:
        raise ConfigurationError(f"strength must be in (0, 1], got {strength}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    source, stored = read_image(image)
    reviewer = resolve_planner(rpg, planner)
    backbone = rpg.backbone
    factor = backbone.latent_factor
    width, height = source.size
    work_w, work_h = width // factor * factor, height // factor * factor
    if work_w < factor or work_h < factor:
        raise ConfigurationError(f"the image is {width}x{height}; it must be at least {factor}px")

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
            "prompt": prompt or (base.prompt if stored else _describe(new_plan)),
            "plan": new_plan.model_dump(),
            "base_ratio": None,
            "planner": None,
            "controls": [],  # inpainting runs without the source's ControlNet
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
    request = request.model_copy(update={"guidance_scale": backbone.guidance_for(request)})
    assert request.seed is not None

    edge = max(1.0, 0.03 * min(width, height)) if feather is None else feather
    mask = region_mask(new_plan, decision.indices, (width, height), feather=edge)
    work_image = source if (work_w, work_h) == (width, height) else source.resize((work_w, work_h))
    work_mask = mask if (work_w, work_h) == (width, height) else mask.resize((work_w, work_h))

    progress.stage("encode")
    t = time.perf_counter()
    backbone.set_scheduler(request.scheduler or backbone.default_scheduler)
    guidance = backbone.uses_guidance(backbone.guidance_for(request))
    conditioning = backbone.encode(
        new_plan, request.negative_prompt, guidance=guidance, prompt=request.prompt
    )
    layout = backbone.layout(new_plan, work_w, work_h)
    # The base class's inputs only: a subclass may add its own (a ControlNet image) that the
    # inpainting pipeline does not take.
    inputs = Backbone.pipeline_inputs(backbone, conditioning)
    if not guidance:
        inputs = {k: v for k, v in inputs.items() if not k.startswith("negative_")}
    pipe = inpaint_pipeline(backbone)
    timings["encode"] = time.perf_counter() - t

    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    progress.stage("denoise")
    pipeline_kwargs["callback_on_step_end"] = step_callback(
        progress, pipeline_kwargs.pop("callback_on_step_end", None)
    )
    with regional([pipe.unet], conditioning, layout, guidance=guidance, cache_kv=backbone.cache_kv):
        # The inpainting pipeline decodes by its own rules (VAE upcast, latent mean/std).
        output, timings["denoise"], decode_seconds = timed_call(
            pipe,
            **inputs,
            image=work_image,
            mask_image=work_mask,
            height=work_h,
            width=work_w,
            strength=strength,
            num_inference_steps=request.steps,
            guidance_scale=backbone.guidance_for(request),
            generator=generator,
            output_type="pil",
            **pipeline_kwargs,
        )

    t = time.perf_counter()
    (painted,) = output.images
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


def _describe(plan: RegionPlan) -> str:
    """A prompt for an image that had none: its base prompt, else its region prompts."""
    return plan.base_prompt or "; ".join(plan.prompts)
