"""Read an image of the shapes world back into objects, with no learned model.

Every pixel takes the nearest colour of :data:`~rpg.eval.shapes.PALETTE` (or none, when it is
far from all of them); the background is the colour most of the border has; each other colour
splits into 4-connected components; a component's shape and size are those of the template
(every shape drawn at every side from 10 to 30 pixels by the generator's own drawing code) that
overlaps it best. Generated images are blurrier than drawn ones, so the best template, not an
exact match, decides, and tiny specks are ignored.

:func:`match_objects` then says, for each expected object, whether one of that colour and shape
was found (binding) and whether its centre lies in the expected region (placement).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from rpg.eval.shapes import COLOURS, IMAGE_SIZE, PALETTE, SHAPES, SIZE_PIXELS, draw_shape

__all__ = [
    "Detection",
    "ObjectCheck",
    "ShapesReading",
    "match_objects",
    "read_image",
    "region_precision",
]

#: Components smaller than this many pixels (at the world's scale) are noise, not objects.
MIN_AREA = 12
#: A pixel farther than this (RGB distance) from every palette colour belongs to no colour.
MAX_DISTANCE = 110.0
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)
_SIDES = range(10, 31)


class Detection(BaseModel):
    """One object found in an image."""

    model_config = ConfigDict(frozen=True)

    colour: str = Field(description="the palette colour of the component")
    shape: str = Field(description="the shape of the best-matching template")
    size: str = Field(description="the size word whose side is nearest the template's")
    x: float = Field(description="centre of the object's box, fraction of the width")
    y: float = Field(description="centre of the object's box, fraction of the height")
    area: int = Field(description="pixels in the component (at the world's scale)")
    iou: float = Field(description="overlap of the component and the best template, 0–1")

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


class ShapesReading(BaseModel):
    """What :func:`read_image` found: the background colour and the objects."""

    model_config = ConfigDict(frozen=True)

    background: str = Field(description="the colour most of the border has")
    objects: tuple[Detection, ...] = Field(description="objects, largest first")


class ObjectCheck(BaseModel):
    """How one expected object fared in an image."""

    model_config = ConfigDict(frozen=True)

    expected: str = Field(description="'red circle'")
    region: tuple[float, float, float, float] | None = Field(
        default=None, description="the box (x0, y0, x1, y1) it should be in, if any"
    )
    found: bool = Field(description="an object of this colour and shape is in the image")
    placed: bool = Field(description="found with its centre inside the region (found if none)")


@functools.cache
def _templates() -> dict[tuple[str, int], tuple[np.ndarray, float, float]]:
    """Every shape at every side: its mask cropped to its bounding box, and the box-centre offset.

    The offset is from the centre of the drawn pixels' bounding box to the centre of the box the
    shape was drawn in (they differ for the star and the triangle).
    """
    out: dict[tuple[str, int], tuple[np.ndarray, float, float]] = {}
    for shape in SHAPES:
        for side in _SIDES:
            canvas = Image.new("L", (side + 8, side + 8), 0)
            draw_shape(ImageDraw.Draw(canvas), shape, (4, 4, 4 + side, 4 + side), 255)
            mask = np.asarray(canvas) > 0
            ys, xs = np.nonzero(mask)
            crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            cx = (xs.min() + xs.max() + 1) / 2
            cy = (ys.min() + ys.max() + 1) / 2
            out[(shape, side)] = (crop, 4 + side / 2 - cx, 4 + side / 2 - cy)
    return out


def _labels(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette of every pixel, ``-1`` where no colour is near."""
    flat = pixels.reshape(-1, 3).astype(np.float32)
    dist = np.linalg.norm(flat[:, None, :] - _RGB[None], axis=2)
    idx = dist.argmin(axis=1)
    idx[dist.min(axis=1) > MAX_DISTANCE] = -1
    return idx.reshape(pixels.shape[:2])


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a boolean mask, each as an array of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    found = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack = [(int(y0), int(x0))]
        seen[y0, x0] = True
        pixels = []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append(np.array(pixels))
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    pa = np.zeros((h, w), bool)
    pb = np.zeros((h, w), bool)
    pa[: a.shape[0], : a.shape[1]] = a
    pb[: b.shape[0], : b.shape[1]] = b
    union = np.logical_or(pa, pb).sum()
    return float(np.logical_and(pa, pb).sum() / union) if union else 0.0


def _classify(pixels: np.ndarray) -> tuple[str, int, float, float, float]:
    """Best (shape, side, iou, box-centre x, box-centre y) for a component's pixels."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    y0, x0 = ys.min(), xs.min()
    crop = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), bool)
    crop[ys - y0, xs - x0] = True
    cx, cy = (x0 + xs.max() + 1) / 2, (y0 + ys.max() + 1) / 2
    best = ("circle", SIZE_PIXELS["small"], -1.0, cx, cy)
    for (shape, side), (template, dx, dy) in _templates().items():
        if abs(template.shape[0] - crop.shape[0]) > 4 or abs(template.shape[1] - crop.shape[1]) > 4:
            continue
        score = _iou(crop, template)
        if score > best[2]:
            best = (shape, side, score, cx + dx, cy + dy)
    return best


def read_image(image: Image.Image, scale: float | None = None) -> ShapesReading:
    """The background and the objects of an image of the shapes world.

    ``scale`` is how many image pixels one pixel of the 64×64 world spans: the image is read at
    its size divided by it, so objects keep the sizes the templates know. ``None`` fits the
    shorter side to 64 (a square image of any size is read at 64×64). A model trained on the
    64×64 world draws at scale 1 on any canvas, e.g. a 128×64 canvas with one region per half.
    """
    rgb = image.convert("RGB")
    if scale is None:
        scale = min(rgb.size) / IMAGE_SIZE
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    read_w = max(1, round(rgb.size[0] / scale))
    read_h = max(1, round(rgb.size[1] / scale))
    if rgb.size != (read_w, read_h):
        rgb = rgb.resize((read_w, read_h), Image.Resampling.BOX)
    labels = _labels(np.asarray(rgb))
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border = border[border >= 0]
    bg_index = int(np.bincount(border, minlength=len(_NAMES)).argmax()) if border.size else 0
    detections = []
    for index, name in enumerate(_NAMES):
        if index == bg_index or name not in COLOURS:
            continue
        for pixels in _components(labels == index):
            if len(pixels) < MIN_AREA:
                continue
            shape, side, iou, x, y = _classify(pixels)
            size = min(SIZE_PIXELS, key=lambda s: abs(SIZE_PIXELS[s] - side))
            detections.append(
                Detection(
                    colour=name,
                    shape=shape,
                    size=size,
                    x=x / read_w,
                    y=y / read_h,
                    area=len(pixels),
                    iou=round(iou, 4),
                )
            )
    detections.sort(key=lambda d: -d.area)
    return ShapesReading(background=_NAMES[bg_index], objects=tuple(detections))


_Box = tuple[float, float, float, float]


def _paired(
    expected: Sequence[str], regions: Sequence[_Box | None] | None
) -> list[tuple[str, _Box | None]]:
    """Each expected object with its region (``None``: anywhere)."""
    boxes = list(regions) if regions is not None else [None] * len(expected)
    if len(boxes) != len(expected):
        raise ValueError(f"{len(expected)} expected objects but {len(boxes)} regions")
    return list(zip(expected, boxes, strict=True))


def _inside(d: Detection, box: _Box | None) -> bool:
    return box is None or (box[0] <= d.x <= box[2] and box[1] <= d.y <= box[3])


def match_objects(
    reading: ShapesReading,
    expected: Sequence[str],
    regions: Sequence[_Box | None] | None = None,
) -> list[ObjectCheck]:
    """For each expected ``"colour shape"``: found anywhere (binding) and found in its region.

    ``regions`` gives each expected object's box in fractions of the canvas (``None``: anywhere).
    """
    checks = []
    for name, box in _paired(expected, regions):
        same = [d for d in reading.objects if d.name == name]
        placed = any(_inside(d, box) for d in same)
        checks.append(ObjectCheck(expected=name, region=box, found=bool(same), placed=placed))
    return checks


def region_precision(
    reading: ShapesReading,
    expected: Sequence[str],
    regions: Sequence[_Box | None] | None = None,
) -> float | None:
    """The fraction of objects found that are an expected object inside that object's region.

    Placement alone cannot see a canvas filled with everything: an object drawn in every region
    is "placed" in its own. This is the other side, ``None`` when nothing was found. A second copy
    of a region's object in that region counts as right; a stray of another kind does not.
    """
    if not reading.objects:
        return None
    pairs = _paired(expected, regions)
    right = sum(
        any(d.name == name and _inside(d, box) for name, box in pairs) for d in reading.objects
    )
    return right / len(reading.objects)
