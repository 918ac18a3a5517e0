"""The one render route: a filled request → encode → inputs → attention context → stock call.

``RPG.generate`` (and through it refine, batch and the editor) and ``edit`` all render through
:func:`render_request`; what differs between model families is the backbone's hooks, and what
differs for editing is the backbone (its stock inpainting pipeline, see
:meth:`~rpg.backbones.base.Backbone.inpaint_backbone`) and the extra pipeline inputs (image,
mask, strength). The pipeline is left as found: the request's scheduler is swapped in for the
call only, and the attention processors are the user's again afterwards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rpg.backbones.base import Backbone, Rendered
from rpg.errors import ConfigurationError
from rpg.img2img import prepare_img2img, wants_img2img
from rpg.models import GenerationRequest
from rpg.progress import RenderProgress, step_callback

__all__ = ["RouteResult", "render_request", "settle_request"]


@dataclass(frozen=True)
class RouteResult:
    """What one pass down the route made."""

    #: The request with everything that was used recorded (scheduler, options, controls).
    request: GenerationRequest
    rendered: Rendered
    #: Images a saved PNG embeds (ControlNet control images).
    control_images: list[Any] = field(default_factory=list)
    #: The init image of an img2img render, as given (a saved PNG embeds it); else ``None``.
    init_image: Any = None
    #: ``encode``, ``denoise`` and ``decode`` seconds.
    timings: dict[str, float] = field(default_factory=dict)


def settle_request(backbone: Backbone, request: GenerationRequest) -> GenerationRequest:
    """The request with what the backbone decides recorded: guidance scale, scheduler, and the
    family's options validated against the loaded model (defaults left out)."""
    options = backbone.parse_options(request.options)
    return request.model_copy(
        update={
            "guidance_scale": backbone.guidance_for(request),
            "scheduler": request.scheduler or backbone.request_scheduler(),
            "options": options.model_dump(exclude_defaults=True),
        }
    )


def render_request(
    backbone: Backbone,
    request: GenerationRequest,
    *,
    progress: RenderProgress,
    pipeline_kwargs: Mapping[str, Any] | None = None,
    output_type: str = "pil",
    callback_on_step_end: Callable[..., Any] | None = None,
    init_image: Any = None,
) -> RouteResult:
    """Render a request whose plan, seed and size are filled in.

    Steps: the backbone turns the request's extra inputs into pipeline arguments
    (:meth:`~rpg.backbones.base.Backbone.prepare_inputs`), encodes the plan once, and renders
    with the stock pipeline inside its attention context, under the request's scheduler. The
    request's LoRAs (whole image and per region) are loaded for the call and removed after
    (:func:`rpg.lora.applied_loras`); the result's request records their files' hashes.
    With an init image (``init_image``: a PIL image or path, else the request's
    ``init_image``) the backbone is the family's img2img one (see :mod:`rpg.img2img`).
    """
    from rpg.lora import applied_loras

    with applied_loras(backbone, request) as loras:
        return _render(
            backbone,
            loras.request,
            progress=progress,
            pipeline_kwargs=pipeline_kwargs,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            region_loras=loras.region_adapters,
            init_image=init_image,
        )


def _render(
    backbone: Backbone,
    request: GenerationRequest,
    *,
    progress: RenderProgress,
    pipeline_kwargs: Mapping[str, Any] | None,
    output_type: str,
    callback_on_step_end: Callable[..., Any] | None,
    region_loras: tuple[tuple[tuple[str, float], ...], ...] | None,
    init_image: Any,
) -> RouteResult:
    plan, seed = request.plan, request.seed
    width, height = request.width, request.height
    if plan is None or seed is None or width is None or height is None:
        raise ValueError("render_request needs a request with plan, seed, width and height")
    pipeline_kwargs = dict(pipeline_kwargs or {})
    picture = None
    if wants_img2img(request, init_image):
        backbone, request, pipeline_kwargs, picture = prepare_img2img(
            backbone, request, pipeline_kwargs, init_image, width=width, height=height
        )
    elif request.strength is not None:
        raise ConfigurationError(
            "strength needs an init image (init_image=, CLI: --init-image FILE); leave strength "
            "out to render from noise"
        )
    prepared = backbone.prepare_inputs(request, pipeline_kwargs, width=width, height=height)
    request = settle_request(backbone, prepared.request)
    options = backbone.parse_options(request.options)
    guidance = backbone.request_guidance(request)
    timings: dict[str, float] = {}

    progress.stage("encode")
    t = time.perf_counter()
    layout = backbone.layout(plan, width, height)  # first: it refuses a plan too fine
    conditioning = backbone.encode(
        plan, request.negative_prompt, guidance=guidance, prompt=request.prompt, options=options
    )
    if region_loras is not None:
        conditioning = dataclasses.replace(conditioning, region_loras=region_loras)
    timings["encode"] = time.perf_counter() - t

    generators = [
        torch.Generator(device="cpu").manual_seed(seed + i) for i in range(request.num_images)
    ]
    generator: torch.Generator | list[torch.Generator] = (
        generators[0] if len(generators) == 1 else generators
    )
    progress.stage("denoise")
    with backbone.using_scheduler(request.scheduler):
        rendered = backbone.render(
            conditioning,
            layout,
            steps=request.steps,
            guidance_scale=backbone.guidance_for(request),
            generator=generator,
            num_images=request.num_images,
            output_type=output_type,
            options=options,
            callback_on_step_end=step_callback(progress, callback_on_step_end),
            **prepared.pipeline_kwargs,
        )
    timings["denoise"] = rendered.denoise_seconds
    timings["decode"] = rendered.decode_seconds
    return RouteResult(
        request, rendered, prepared.control_images, timings=timings, init_image=picture
    )
