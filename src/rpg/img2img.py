"""img2img: render a plan over an existing picture with the family's stock img2img pipeline.

The route (:mod:`rpg.route`) calls :func:`prepare_img2img` when a request has an init image:
the backbone is swapped for the family's img2img one
(:meth:`~rpg.backbones.base.Backbone.img2img_backbone`, the same modules under the stock
``...Img2ImgPipeline``), the picture is opened, brought to the render's size and recorded in the
request (path as given, pixel hash, strength), and the pipeline gets it with the strength. The
regional attention, encoding and layout are the text-to-image ones: the layout is computed at
the render's size like any other.

Sizes: without a width and height the render takes the init image's size, rounded down to the
model's size step; an init image of another size is resized to the render's (with a warning,
since a different aspect ratio distorts it).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError
from rpg.models import DEFAULT_STRENGTH, GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.backbones.base import Backbone

__all__ = ["check_strength", "default_size", "open_init_image", "prepare_img2img", "wants_img2img"]

log = logging.getLogger(__name__)

#: What ``init_image=`` accepts: a PIL image or a path.
InitImage = Any


def wants_img2img(request: GenerationRequest, init_image: InitImage | None) -> bool:
    """Whether the request renders over a picture (one given, or one the request records)."""
    return init_image is not None or request.init_image is not None


def open_init_image(source: InitImage) -> Image:
    """The init image as RGB: a PIL image (converted) or a path (opened)."""
    from PIL import Image as PILImage

    if isinstance(source, PILImage.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            with PILImage.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise ConfigurationError(
                f"init image not found: {path}; pass an existing picture (--init-image FILE); a "
                "PNG rpg saved from an img2img render embeds it, so --from needs no file"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read init image {path}: {exc}") from None
    raise ConfigurationError(
        f"init_image must be a PIL image or a file path, not {type(source).__name__}"
    )


def default_size(image: Image, factor: int) -> tuple[int, int]:
    """The render size for an init image when the request names none: its size, rounded down
    to a multiple of ``factor`` (the model's size step), with a note when that changes it."""
    width, height = image.size
    w, h = max(factor, width // factor * factor), max(factor, height // factor * factor)
    if (w, h) != (width, height):
        log.warning(
            "the init image is %dx%d; rendering at %dx%d (sizes are multiples of %d for this "
            "model)",
            width,
            height,
            w,
            h,
            factor,
        )
    return w, h


def check_strength(strength: float, steps: int, what: str = "strength") -> None:
    """Refuse a strength that leaves the img2img pipeline no denoising step.

    The stock img2img pipelines run about ``steps × strength`` steps (rounded down); below one
    step they fail deep inside. ``what`` names the setting in the message.
    """
    if not 0 < strength <= 1:
        raise ConfigurationError(f"{what} must be in (0, 1], got {strength:g}")
    if steps * strength < 1:
        raise ConfigurationError(
            f"{what} {strength:g} with {steps} steps runs no denoising step (img2img runs about "
            f"steps x strength of them); raise the {what}, or the steps to at least "
            f"{math.ceil(1 / strength)}"
        )


def prepare_img2img(
    backbone: Backbone,
    request: GenerationRequest,
    pipeline_kwargs: Mapping[str, Any],
    init_image: InitImage | None,
    *,
    width: int,
    height: int,
) -> tuple[Backbone, GenerationRequest, dict[str, Any], Image]:
    """The img2img backbone, the request with the init image recorded, the pipeline arguments
    with the picture (at the render's size) and strength added, and the picture as given (what
    the PNG embeds: its hash is the one recorded).

    The picture is ``init_image`` (a PIL image or a path), else the file the request records.
    """
    from PIL import Image as PILImage

    from rpg.metadata import image_sha256

    img2img = backbone.img2img_backbone()  # refuses a family without one, before any work
    kwargs = dict(pipeline_kwargs)
    if "image" in kwargs and not getattr(backbone, "controlnet_names", None):
        raise ConfigurationError(
            "image= is not an img2img input here: pass the picture to render over as "
            "init_image= (CLI: --init-image FILE)"
        )
    strength = request.strength if request.strength is not None else DEFAULT_STRENGTH
    check_strength(strength, request.steps)
    from_request = init_image is None
    source = request.init_image if from_request else init_image
    picture = open_init_image(source)
    digest = image_sha256(picture)
    if from_request and request.init_image_sha256 not in (None, digest):
        warnings.warn(
            f"the init image {request.init_image} has changed since the request was recorded "
            "(its sha256 differs), so the render will differ",
            stacklevel=4,
        )
    if isinstance(source, (str, os.PathLike)):
        path: str | None = os.fspath(source)
    elif request.init_image_sha256 == digest:
        path = request.init_image  # the recorded pixels, given as an object: keep the path
    else:
        path = None
    original = picture
    if picture.size != (width, height):
        warnings.warn(
            f"the init image is {picture.width}x{picture.height}; resized to the render size "
            f"{width}x{height}"
            + (
                " (the aspect ratio changes, so it is stretched)"
                if abs(picture.width * height - picture.height * width) > max(width, height)
                else ""
            ),
            stacklevel=4,
        )
        picture = picture.resize((width, height), PILImage.Resampling.LANCZOS)
    request = request.model_copy(
        update={"init_image": path, "init_image_sha256": digest, "strength": strength}
    )
    kwargs["init_image"] = picture if request.num_images == 1 else [picture] * request.num_images
    kwargs["strength"] = strength
    return img2img, request, kwargs, original
