"""A layer mask from an uploaded picture, at a size a plan (and a PNG's metadata) can carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from rpg.cli import format_error
from rpg.models import MAX_PLAN_JSON_BYTES, LayerMask
from rpg.ui.http import UserError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MAX_MASK_CHARS", "MAX_MASK_SIDE", "MIN_MASK_SIDE", "read_mask"]

#: Masks are kept at most this many pixels on their long side: finer than any latent or patch
#: grid they are resampled to (128 at 1024 px), and small enough to travel in the plan.
MAX_MASK_SIDE = 512
#: Longest base64 text of one mask: eight detailed masks still fit a plan
#: (:data:`rpg.models.MAX_PLAN_JSON_BYTES`). A simple shape at 512 px takes a few KiB.
MAX_MASK_CHARS = MAX_PLAN_JSON_BYTES // 8
#: Smallest side a detailed mask is shrunk to (any 8-bit picture this size fits the limit).
MIN_MASK_SIDE = 64


def read_mask(data: bytes, filename: str) -> LayerMask:
    """A layer mask from an uploaded image: grayscale, white paints the layer, black does not.

    A transparent pixel paints nothing whatever its colour (a mask painted on a transparent
    background in an image editor means what it shows). Images larger than
    :data:`MAX_MASK_SIDE` are shrunk by area averaging, as every grid the mask is resampled to
    would average them anyway, and so are masks too detailed to fit
    :data:`MAX_MASK_CHARS` (halving down to :data:`MIN_MASK_SIDE`), so that a plan with
    several masks stays within the size a PNG's metadata can carry.
    """
    return _fit(_grayscale(data, filename), filename)


def _grayscale(data: bytes, filename: str) -> Image.Image:
    """The uploaded picture in grayscale, transparent pixels black (they paint nothing)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = opened.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning) as exc:
        raise UserError(
            f"{filename} is not a readable image ({format_error(exc)}); upload a PNG whose "
            "white parts are the layer and black parts are not",
            "mask",
        ) from None
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba).convert("L")
    return image


def _fit(image: Image.Image, filename: str) -> LayerMask:
    """The mask of ``image``, shrunk until it is at most :data:`MAX_MASK_SIDE` on its long side
    and its PNG at most :data:`MAX_MASK_CHARS` (or its side :data:`MIN_MASK_SIDE`)."""
    from PIL import Image

    side = MAX_MASK_SIDE
    while True:
        if max(image.size) > side:
            scale = side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BOX)
        try:
            mask = LayerMask.from_image(image)
        except (ValidationError, ValueError) as exc:
            raise UserError(f"{filename}: {format_error(exc)}", "mask") from None
        # Even noise fits at MIN_MASK_SIDE (64² bytes of pixels, under 6 KiB as base64).
        if len(mask.png) <= MAX_MASK_CHARS or max(image.size) <= MIN_MASK_SIDE:
            return mask
        side = max(MIN_MASK_SIDE, max(image.size) // 2)
