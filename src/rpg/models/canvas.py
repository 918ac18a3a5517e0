"""Canvas plans: a layer (a prompt painted in a box or a mask), its mask picture, and the warning
for a layer that paints nothing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field, WithJsonSchema, field_validator, model_validator

from rpg.layout import Box, box_cells
from rpg.lora_spec import LoraInput
from rpg.models.parts import (
    PromptedPart,
    base_weight_field,
    loras_field,
    negative_prompt_field,
    prompt_field,
)
from rpg.models.validation import FROZEN

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class LayerWarning(UserWarning):
    """A canvas layer paints nothing at the size being rendered (covered, or too small)."""


class LayerMask(BaseModel):
    """A layer's shape as a grayscale picture, kept by content so a plan is self-contained.

    The PNG may have any size; it is stretched over the whole canvas and resampled to each
    latent or patch grid by area averaging (a grid cell's coverage is the mean of the mask over
    that cell), so a mask drawn at 512×512 serves a 1024×768 render. Pixel values 0 to 255 are
    coverage 0 to 1: 255 paints the layer, 0 leaves what is below, values between are
    translucent.
    """

    model_config = FROZEN

    png: str = Field(
        description="The mask as a base64-encoded grayscale PNG; 255 = the layer paints here, "
        "0 = it does not, values between blend."
    )
    sha256: str = Field(
        pattern="^[0-9a-f]{64}$",
        description="Hex SHA-256 of the PNG bytes (not of the base64 text): identifies the mask.",
    )
    soft_edge: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        allow_inf_nan=False,
        description="Feathering of the mask's edges: the standard deviation of a Gaussian blur "
        "applied at every grid, as a fraction of the canvas's longer side (0.02 is a soft edge, "
        "0 a hard one).",
    )

    @model_validator(mode="after")
    def _valid_png(self) -> LayerMask:
        data = self.png_bytes
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ValueError(
                f"the mask's sha256 {self.sha256} does not match its PNG bytes ({digest}); "
                "make masks with LayerMask.from_image"
            )
        pixels = self._pixels()
        if not bool((pixels > 0).any()):
            raise ValueError(
                "the mask is empty (every pixel is 0), so its layer would paint nothing; "
                "paint the layer's area white, or remove the layer"
            )
        return self

    @property
    def png_bytes(self) -> bytes:
        """The PNG file's bytes."""
        try:
            return base64.b64decode(self.png, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the mask's png is not valid base64") from None

    def _pixels(self) -> np.ndarray:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.png_bytes)) as img:
                if img.format != "PNG":
                    raise ValueError(f"the mask is a {img.format} image; it must be a PNG")
                return np.asarray(img.convert("L"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"the mask's png cannot be read as an image ({exc})") from None

    @property
    def size(self) -> tuple[int, int]:
        """The mask picture's ``(width, height)``."""
        h, w = self._pixels().shape
        return w, h

    @classmethod
    def from_image(cls, image: Image.Image | np.ndarray, *, soft_edge: float = 0.0) -> LayerMask:
        """A mask from a picture or an array.

        A PIL image is converted to grayscale (``L``). An array ``[h, w]`` may be bool (True
        paints), an integer type (0 to 255) or floats (0 to 1, clipped).
        """
        import numpy as np
        from PIL import Image

        if isinstance(image, Image.Image):
            gray = image.convert("L")
        else:
            arr = np.asarray(image)
            if arr.ndim != 2:
                raise ValueError(f"a mask array must be 2-D [height, width], got shape {arr.shape}")
            if arr.dtype == bool:
                arr = arr.astype(np.uint8) * 255
            elif np.issubdtype(arr.dtype, np.floating):
                if not np.isfinite(arr).all():
                    raise ValueError("a mask array must hold finite numbers")
                arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
            else:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            gray = Image.fromarray(arr, mode="L")
        buf = io.BytesIO()
        gray.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
        return cls(
            png=base64.b64encode(data).decode("ascii"),
            sha256=hashlib.sha256(data).hexdigest(),
            soft_edge=soft_edge,
        )

    def coverage(self, h: int, w: int) -> np.ndarray:
        """Coverage ``[h, w]`` (float64, 0 to 1) of the mask on an ``h × w`` grid.

        Area averaging: each grid cell gets the mean of the mask over the part of the canvas it
        covers. With ``soft_edge`` the result is then blurred (Gaussian, standard deviation
        ``soft_edge · max(h, w)`` cells, edges extended), so the feathering is the same
        fraction of the canvas at every grid. Values within half a grey level (1/510) of 0 or 1
        are snapped to it, so a cell wholly inside or outside a mask is exactly 1 or 0 (and the
        far tails of a blur do not make the whole canvas translucent).
        """
        import numpy as np

        pixels = self._pixels().astype(np.float64) / 255.0
        cover = _area_matrix(h, pixels.shape[0]) @ pixels @ _area_matrix(w, pixels.shape[1]).T
        if self.soft_edge > 0:
            sigma = self.soft_edge * max(h, w)
            cover = _blur_axis(_blur_axis(cover, sigma, 0), sigma, 1)
        cover = np.clip(cover, 0.0, 1.0)
        cover[cover < _SNAP] = 0.0
        cover[cover > 1 - _SNAP] = 1.0
        return cover

    def bounding_box(self) -> Box:
        """The smallest box ``(x0, y0, x1, y1)`` (canvas fractions) holding every painted pixel."""
        import numpy as np

        pixels = self._pixels()
        ys = np.flatnonzero(pixels.any(axis=1))
        xs = np.flatnonzero(pixels.any(axis=0))
        h, w = pixels.shape
        return (
            float(xs[0] / w),
            float(ys[0] / h),
            float((xs[-1] + 1) / w),
            float((ys[-1] + 1) / h),
        )


#: Coverage this close to 0 or 1 is snapped to it: half of one grey level of the mask's PNG.
_SNAP = 0.5 / 255


def _area_matrix(n: int, m: int) -> np.ndarray:
    """``[n, m]`` weights averaging ``m`` source cells onto ``n`` target cells by area."""
    import numpy as np

    edges_src = np.arange(m + 1, dtype=np.float64) / m
    edges_dst = np.arange(n + 1, dtype=np.float64) / n
    lo = np.maximum(edges_dst[:-1, None], edges_src[None, :-1])
    hi = np.minimum(edges_dst[1:, None], edges_src[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _blur_axis(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """A Gaussian blur of standard deviation ``sigma`` cells along ``axis``, edges extended."""
    import numpy as np

    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    moved = np.moveaxis(values, axis, -1)
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius, radius)], mode="edge")
    out = np.zeros_like(moved)
    n = moved.shape[-1]
    for i, tap in enumerate(taps):
        out += tap * padded[..., i : i + n]
    return np.moveaxis(out, -1, axis)


class Layer(PromptedPart):
    """One layer of a canvas plan: a prompt painted inside a box or a mask.

    Layers stack bottom to top like layers in an image editor: where a layer paints, it covers
    the layers below it (and the background) in proportion to its coverage.
    """

    _part = "layer"

    prompt: str = prompt_field("drawn in this layer")
    negative_prompt: str | None = negative_prompt_field("layer")
    base_weight: float | None = base_weight_field("layer")
    # a plain array in the JSON Schema: structured-output services refuse `prefixItems`
    box: (
        Annotated[
            tuple[float, float, float, float],
            WithJsonSchema(
                {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="Where the layer paints: [x0, y0, x1, y1] as fractions of the canvas width "
        "and height (0 to 1, origin top left), x0 < x1 and y0 < y1. Null when a mask is given.",
    )
    mask: LayerMask | None = Field(
        default=None,
        description="Where the layer paints, as a grayscale picture; null when a box is given.",
    )
    loras: tuple[LoraInput, ...] = loras_field("layer")

    @field_validator("box")
    @classmethod
    def _box_inside(cls, v: Box | None) -> Box | None:
        if v is None:
            return None
        x0, y0, x1, y1 = v
        if not all(math.isfinite(c) for c in v):
            raise ValueError(f"box {list(v)} must hold finite numbers")
        if not (0 <= x0 <= 1 and 0 <= y0 <= 1 and 0 <= x1 <= 1 and 0 <= y1 <= 1):
            raise ValueError(
                f"box {list(v)} must lie inside the canvas: [x0, y0, x1, y1] as fractions 0 to 1"
            )
        if not (x0 < x1 and y0 < y1):
            raise ValueError(
                f"box {list(v)} has no area: it needs x0 < x1 and y0 < y1 ([x0, y0, x1, y1], "
                "not [x, y, width, height])"
            )
        return v

    @model_validator(mode="after")
    def _one_shape(self) -> Layer:
        if (self.box is None) == (self.mask is None):
            raise ValueError(
                "a layer needs exactly one shape: a box [x0, y0, x1, y1] or a mask, "
                f"got {'both' if self.box is not None else 'neither'}"
            )
        return self

    @property
    def bounding_box(self) -> Box:
        """The layer's box, or its mask's bounding box."""
        if self.box is not None:
            return self.box
        assert self.mask is not None
        return self.mask.bounding_box()

    def coverage(self, h: int, w: int) -> np.ndarray:
        """The layer's own coverage ``[h, w]`` (before layers above cover it)."""
        import numpy as np

        if self.mask is not None:
            return self.mask.coverage(h, w)
        assert self.box is not None
        y0, y1, x0, x1 = box_cells(self.box, h, w)
        cover = np.zeros((h, w), dtype=np.float64)
        cover[y0:y1, x0:x1] = 1.0
        return cover
