"""Hires fix: render at the request's size, upscale the picture, refine it at the larger size.

The second pass is the family's stock img2img pipeline on the one render route
(:mod:`rpg.route`) with the same plan, seed, prompts and settings; only the size, the steps
(``hires.steps``) and the strength (``hires.strength``) change. The regional layout is computed
again at the larger latent grid by the route, like for any size.

**Image upscale, not latent upscale.** The first pass's picture is decoded by its pipeline, resized
with Lanczos and handed to the img2img pipeline, which encodes it again. Every family's
img2img pipeline takes a picture, so this works alike for SD, SDXL, ControlNet, FLUX.1 and SD3
with no knowledge of their latent layouts (FLUX packs 2×2 patches, SD3 and FLUX shift and scale
latents; each pipeline encodes by its own rules). Resizing latents instead smears them: the
decoder sees values it was not trained on, so latent upscaling needs a high strength (about
0.55 or more) to clean up, which repaints the composition the first pass settled. A picture
resize keeps that composition at a low strength, at the cost of one VAE decode and encode.

Image ``i`` of a request is refined with seed ``seed + i`` on its own, so it equals the single
image of the request with that seed (what a saved PNG records, see
:func:`rpg.metadata.image_request`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError
from rpg.img2img import check_strength
from rpg.layout import MAX_SIDE
from rpg.models import GenerationRequest, HiresFix

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL.Image import Image

    from rpg.backbones.base import Backbone
    from rpg.progress import RenderProgress
    from rpg.route import RouteResult

__all__ = ["hires_pass", "hires_request", "hires_size", "upscale"]

log = logging.getLogger(__name__)


def hires_size(width: int, height: int, scale: float, factor: int) -> tuple[int, int]:
    """``width × height`` times ``scale``, each side rounded to a multiple of ``factor`` (the
    model's size step: 8 for SD and SDXL, 16 for FLUX and SD3), with a note when rounding
    changes the scale; larger than rpg renders is a :class:`ConfigurationError`."""
    exact_w, exact_h = width * scale, height * scale
    w = max(factor, round(exact_w / factor) * factor)
    h = max(factor, round(exact_h / factor) * factor)
    if (w, h) != (exact_w, exact_h):
        log.warning(
            "hires: %dx%d x %g is %gx%g; rendering %dx%d (sizes are multiples of %d for this "
            "model)",
            width,
            height,
            scale,
            exact_w,
            exact_h,
            w,
            h,
            factor,
        )
    if max(w, h) > MAX_SIDE:
        raise ConfigurationError(
            f"hires: {width}x{height} x {scale:g} is {w}x{h}, larger than rpg renders "
            f"({MAX_SIDE} px a side); lower --hires or the size"
        )
    return w, h


def hires_request(
    request: GenerationRequest, hires: HiresFix, size: tuple[int, int], index: int
) -> GenerationRequest:
    """The refining pass of image ``index``: the same request at ``size``, one image with seed
    ``seed + index``, the hires steps and strength, no hires of its own. Its init image is the
    upscaled picture, passed to the route, not recorded."""
    assert request.seed is not None
    steps = hires.steps if hires.steps is not None else request.steps
    check_strength(hires.strength, steps, "hires strength")
    return request.model_copy(
        update={
            "width": size[0],
            "height": size[1],
            "seed": request.seed + index,
            "num_images": 1,
            "steps": steps,
            "strength": hires.strength,
            "init_image": None,
            "init_image_sha256": None,
            "hires": None,
        }
    )


def upscale(image: Any, size: tuple[int, int]) -> Image:
    """The first pass's picture resized to ``size`` with Lanczos."""
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        raise TypeError(f"the hires fix upscales PIL images, got {type(image).__name__}")
    return image.resize(size, PILImage.Resampling.LANCZOS)


def hires_pass(
    backbone: Backbone,
    first: RouteResult,
    size: tuple[int, int],
    *,
    pipeline_kwargs: dict[str, Any],
    output_type: str,
    callback_on_step_end: Callable[..., Any] | None,
    progress: RenderProgress,
) -> list[Any]:
    """Refine each first-pass picture at the hires size through the route (img2img)."""
    from rpg.route import render_request

    request, hires = first.request, first.request.hires
    assert hires is not None
    images = []
    for index, picture in enumerate(first.rendered.images):
        refine = hires_request(request, hires, size, index)
        progress.start(refine.steps)
        routed = render_request(
            backbone,
            refine,
            progress=progress,
            pipeline_kwargs=pipeline_kwargs,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            init_image=upscale(picture, size),
        )
        images.extend(routed.rendered.images)
    return images
