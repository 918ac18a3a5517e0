"""A render's result: the images and everything that made them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpg.models.plan import RegionPlan
from rpg.models.reply import PlanResult
from rpg.models.request import GenerationRequest


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

        from rpg.metadata_write import save_png

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
