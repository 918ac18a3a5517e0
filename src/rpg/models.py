"""Typed core of rpg: plans, recaptions, requests and results.

The models are frozen pydantic v2 models, and frozen all the way down: their sequences are
tuples, so a plan or request cannot change after it was validated (JSON still holds arrays, and
lists are accepted on input). Their field descriptions are the reference documentation and end
up in the JSON Schema that planners hand to language models, so they are written for both
readers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from rpg.errors import SplitRatioError
from rpg.layout import (
    MAX_SIDE,
    Box,
    box_cells,
    check_finite_total,
    composite_layers,
    cumulative_bounds,
    edges_from_bounds,
    format_split_ratio,
    grid_of_boxes,
    parse_split_ratio,
    split_prompts,
)
from rpg.lora_spec import LoraInput, coerce_loras

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "DEFAULT_BASE_RATIO",
    "DEFAULT_HIRES_STRENGTH",
    "DEFAULT_STRENGTH",
    "MAX_CONTROL_SCALE",
    "MAX_LAYERS",
    "MAX_PLAN_JSON_BYTES",
    "MAX_PROMPT_CHARS",
    "MAX_REQUEST_JSON_BYTES",
    "MAX_SEED",
    "ControlInput",
    "Entity",
    "GenerationRequest",
    "GenerationResult",
    "HiresFix",
    "Layer",
    "LayerMask",
    "LayerWarning",
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

#: Most layers a canvas plan may have: every layer is one more prompt to encode and one more
#: attention at the positions it shares, and past a few dozen a canvas is better said as a grid.
MAX_LAYERS = 32

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
    # --- LoRA (rpg.lora): left out of the JSON when empty, so plans read as before.
    loras: tuple[LoraInput, ...] = Field(
        default=(),
        exclude_if=lambda v: not v,
        description="LoRA adapters that act on this region's prompt only: the keys and values "
        "its text gives in cross-attention (see rpg.lora). Empty for none.",
    )

    @field_validator("loras", mode="before")
    @classmethod
    def _coerce_loras(cls, v: Any) -> Any:
        return coerce_loras(v)

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

    model_config = _FROZEN

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


class Layer(BaseModel):
    """One layer of a canvas plan: a prompt painted inside a box or a mask.

    Layers stack bottom to top like layers in an image editor: where a layer paints, it covers
    the layers below it (and the background) in proportion to its coverage.
    """

    model_config = _FROZEN

    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="The sub-prompt drawn in this layer: its entity with all of that entity's "
        "attributes, plus the shared setting and style.",
    )
    negative_prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="A negative prompt for this layer only; null uses the request's negative "
        "prompt.",
    )
    base_weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="How much of the base prompt is blended into this layer (0 to 1); null uses "
        "the plan's base_ratio.",
    )
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
    # --- LoRA (rpg.lora): left out of the JSON when empty, so plans read as before.
    loras: tuple[LoraInput, ...] = Field(
        default=(),
        exclude_if=lambda v: not v,
        description="LoRA adapters that act on this layer's prompt only: the keys and values "
        "its text gives in cross-attention (see rpg.lora). Empty for none.",
    )

    @field_validator("loras", mode="before")
    @classmethod
    def _coerce_loras(cls, v: Any) -> Any:
        return coerce_loras(v)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        return _non_blank(v, "a layer prompt")

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


class RegionPlan(BaseModel):
    """Where each prompt goes: a grid of rows and regions, or a canvas of layers.

    A *grid* plan (``rows``) tiles the canvas: rows top to bottom, regions left to right. A
    *canvas* plan (``layers``) stacks boxes and masks bottom to top over a background, which the
    base prompt paints (the user's whole prompt when there is no base prompt). Exactly one of
    the two is given.
    """

    model_config = _FROZEN

    rows: tuple[Row, ...] = Field(
        default=(),
        description="Grid plans: the rows of the canvas, from top to bottom. Empty for a canvas "
        "plan.",
    )
    layers: tuple[Layer, ...] = Field(
        default=(),
        description="Canvas plans: the layers, from bottom to top; each is a box or a mask, and "
        "a later layer covers the ones below where they overlap. Empty for a grid plan.",
    )
    base_prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="A prompt for the whole image, blended into every region; use it when the "
        "entities share a class or a scene. In a canvas plan it also paints the background "
        "(what no layer covers). Null for none.",
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
    def _one_kind(self) -> RegionPlan:
        if self.rows and self.layers:
            raise ValueError(
                "a plan is either a grid (rows) or a canvas (layers), not both; convert the grid "
                "with plan.to_canvas() and add the layers to it"
            )
        if not self.rows and not self.layers:
            raise ValueError(
                "a plan needs rows (a grid: rows of regions) or layers (a canvas: boxes and "
                "masks); both are empty"
            )
        if len(self.layers) > MAX_LAYERS:
            raise ValueError(
                f"a canvas plan has at most {MAX_LAYERS} layers, got {len(self.layers)}; merge "
                "layers that share a prompt into one mask, or use a grid plan"
            )
        return self

    @model_validator(mode="after")
    def _finite_total_height(self) -> RegionPlan:
        check_finite_total([row.height for row in self.rows], "row heights")
        return self

    @model_validator(mode="after")
    def _bounded_size(self) -> RegionPlan:
        _check_json_size(self, MAX_PLAN_JSON_BYTES, "the plan")
        return self

    @property
    def is_canvas(self) -> bool:
        """Whether this is a canvas plan (layers) rather than a grid plan (rows)."""
        return bool(self.layers)

    @property
    def has_background(self) -> bool:
        """Whether the background may paint somewhere: a canvas whose layers are not boxes
        tiling the canvas as rows and columns. Its text (the base prompt, else the whole
        prompt) is then packed for the attention to read."""
        if not self.layers:
            return False
        boxes = [layer.box for layer in self.layers]
        if any(b is None for b in boxes):
            return True
        return grid_of_boxes([b for b in boxes if b is not None]) is None

    @property
    def regions(self) -> list[Region]:
        """All regions in reading order: rows top to bottom, regions left to right.

        For a canvas plan, one region per layer (bottom to top) with the layer's prompt,
        negative prompt and base weight; its ``width`` means nothing there.
        """
        if self.layers:
            return [
                Region(
                    prompt=x.prompt,
                    negative_prompt=x.negative_prompt,
                    base_weight=x.base_weight,
                    loras=x.loras,
                )
                for x in self.layers
            ]
        return [region for row in self.rows for region in row.regions]

    @property
    def prompts(self) -> list[str]:
        """The regional prompts in reading order (a canvas: its layers bottom to top)."""
        if self.layers:
            return [layer.prompt for layer in self.layers]
        return [region.prompt for region in self.regions]

    def base_weights(self) -> list[float]:
        """The effective base weight of every region or layer (all 0 without a base prompt)."""
        if self.base_prompt is None:
            return [0.0] * len(self.prompts)
        items = self.layers or self.regions
        return [self.base_ratio if r.base_weight is None else r.base_weight for r in items]

    def split_rows(self) -> list[tuple[float, list[float]]]:
        """The plan's geometry as ``[(height, [width, ...]), ...]`` relative weights.

        Grid plans only: a canvas has no rows (a clear error says so).
        """
        if self.layers:
            raise SplitRatioError(
                "a canvas plan (layers) has no rows and no split ratio; only grid plans do"
            )
        return [(row.height, [r.width for r in row.regions]) for row in self.rows]

    def boxes(self) -> list[tuple[float, float, float, float]]:
        """Every region's box ``(x0, y0, x1, y1)`` as fractions of the canvas, in reading order.

        For a canvas plan, every layer's box bottom to top; a mask layer gives its mask's
        bounding box (the smallest box holding every painted pixel).
        """
        if self.layers:
            return [layer.bounding_box for layer in self.layers]
        row_bounds = [0.0, *cumulative_bounds([row.height for row in self.rows]), 1.0]
        boxes = []
        for i, row in enumerate(self.rows):
            y, y1 = row_bounds[i], row_bounds[i + 1]
            col_bounds = [0.0, *cumulative_bounds([r.width for r in row.regions]), 1.0]
            for j in range(len(row.regions)):
                boxes.append((col_bounds[j], y, col_bounds[j + 1], y1))
        return boxes

    def to_canvas(self) -> RegionPlan:
        """The same plan as a canvas: every region becomes a box layer, in reading order.

        Prompts, negative prompts, base weights and the base prompt are kept, and the boxes
        land on the very cells the grid has at every size, so both render the same pixels. A
        canvas plan is returned as it is.
        """
        if self.layers:
            return self
        layers = [
            Layer(
                prompt=r.prompt,
                negative_prompt=r.negative_prompt,
                base_weight=r.base_weight,
                box=box,
                loras=r.loras,
            )
            for r, box in zip(self.regions, self.boxes(), strict=True)
        ]
        return RegionPlan(layers=layers, base_prompt=self.base_prompt, base_ratio=self.base_ratio)

    def layer_weights(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """What every layer and the background paint on an ``h × w`` grid.

        Returns ``(weights [N, h, w], background [h, w])``, float64, from the layers' coverage
        composited bottom to top (see :func:`rpg.layout.composite_layers`); they sum to 1 at
        every position. Boxes go to the nearest grid lines (rounding half up, as grid cells
        do); boxes that tile the canvas as rows and columns are rasterised exactly like those
        rows and columns (:func:`rpg.layout.grid_of_boxes`). A grid plan answers as its
        :meth:`to_canvas`.
        """
        import numpy as np

        if not self.layers:
            return self.to_canvas().layer_weights(h, w)
        boxes = [layer.box for layer in self.layers]
        grid = (
            grid_of_boxes([b for b in boxes if b is not None])
            if all(b is not None for b in boxes)
            else None
        )
        if grid is None:
            return composite_layers([layer.coverage(h, w) for layer in self.layers])
        row_bounds, col_bounds = grid
        row_edges = edges_from_bounds(row_bounds, h)
        weights = np.zeros((len(self.layers), h, w), dtype=np.float64)
        r = 0
        for i, cols in enumerate(col_bounds):
            col_edges = edges_from_bounds(cols, w)
            for j in range(len(cols) + 1):
                y0, y1 = row_edges[i], row_edges[i + 1]
                weights[r, y0:y1, col_edges[j] : col_edges[j + 1]] = 1.0
                r += 1
        return weights, np.zeros((h, w), dtype=np.float64)

    def unpainted_layers(self, h: int, w: int) -> list[int]:
        """Indices of the layers that paint nothing on an ``h × w`` grid (covered or too small)."""
        if not self.layers:
            return []
        weights, _ = self.layer_weights(h, w)
        return [i for i in range(len(self.layers)) if not bool((weights[i] > 0).any())]

    def warn_unpainted(self, height: int, width: int, *, factor: int = 8) -> list[int]:
        """Warn (:class:`LayerWarning`) for every layer that paints nothing on a ``width ×
        height`` image whose finest grid is ``factor`` pixels a cell; returns their indices."""
        h, w = height // factor, width // factor
        found = self.unpainted_layers(h, w)
        for i in found:
            layer = self.layers[i]
            shown = layer.prompt if len(layer.prompt) <= 40 else layer.prompt[:37] + "..."
            covered = layer.coverage(h, w).any()
            why = (
                "the layers above it cover it completely"
                if covered
                else f"it is smaller than one {factor}x{factor}-pixel cell"
            )
            warnings.warn(
                f"layer {i + 1} of {len(self.layers)} ({shown!r}) paints nothing on a "
                f"{width}x{height} image: {why}; its prompt acts nowhere (move or enlarge it, "
                "or render larger)",
                LayerWarning,
                stacklevel=2,
            )
        return found

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
        if (
            isinstance(data, dict)
            and "plan" in data
            and "rows" not in data
            and "layers" not in data
        ):
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
