"""The shapes world: seeded 64×64 scenes of coloured shapes, their captions and ground truth.

A trained model can only be judged where the right answer is known exactly. In this world every
image is a plain background with one to four flat-coloured shapes, so a scene is fully described
by data (:class:`Scene`), an image of it is drawn without anti-aliasing (:func:`render`), and
:mod:`rpg.eval.shapes_score` reads any image back into objects without a learned model.

Captions come in several natural templates (single objects, pairs with "and", relations, rows
"from left to right", backgrounds). Some pairs of objects never appear together in a training
caption (:data:`HELD_OUT_PAIRS`): prompts built from them test composition the model never saw.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELD_OUT_PAIRS",
    "IMAGE_SIZE",
    "OBJECT_COUNT_WEIGHTS",
    "PALETTE",
    "SHAPES",
    "SIZES",
    "SIZE_PIXELS",
    "WORDS",
    "Scene",
    "ShapeObject",
    "caption",
    "crop_scene",
    "has_held_out_pair",
    "object_phrase",
    "render",
    "sample_scene",
    "sample_training_example",
    "shape_polygon",
]

#: Side of every image of the world, in pixels.
IMAGE_SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple")
SIZES: tuple[str, ...] = ("small", "large")
#: Background colours: the neutral ones and every object colour.
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray", *COLOURS)
#: How often a scene has 1, 2, 3 and 4 objects (relative weights; fewer more often).
OBJECT_COUNT_WEIGHTS: tuple[float, ...] = (4.0, 3.0, 2.0, 1.5)
#: Side of an object's bounding box by size word.
SIZE_PIXELS: dict[str, int] = {"small": 14, "large": 24}
#: RGB of every colour word; well apart, so that segmentation by nearest colour is exact.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
#: Smallest gap, in pixels, between two objects' bounding boxes (segmentation keeps them apart).
GAP = 3

Shape = Literal["circle", "square", "triangle", "star"]
Colour = Literal["red", "green", "blue", "yellow", "orange", "purple"]
Size = Literal["small", "large"]
Background = Literal["white", "black", "gray", "red", "green", "blue", "yellow", "orange", "purple"]


class ShapeObject(BaseModel):
    """One object of a scene: what it is and where its bounding box is centred."""

    model_config = ConfigDict(frozen=True)

    shape: Shape = Field(description="the shape word")
    colour: Colour = Field(description="the colour word")
    size: Size = Field(description="the size word; the bounding box side is SIZE_PIXELS[size]")
    x: float = Field(ge=0, le=1, description="centre of the bounding box, fraction of the width")
    y: float = Field(ge=0, le=1, description="centre of the bounding box, fraction of the height")

    @property
    def name(self) -> str:
        """``"red circle"``: the colour and shape, which identify an object within a scene."""
        return f"{self.colour} {self.shape}"

    def box(self, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
        """The integer bounding box ``(x0, y0, x1, y1)`` (exclusive ends) on a ``size`` canvas."""
        side = SIZE_PIXELS[self.size] * size // IMAGE_SIZE
        x0 = round(self.x * size - side / 2)
        y0 = round(self.y * size - side / 2)
        return x0, y0, x0 + side, y0 + side


class Scene(BaseModel):
    """A background colour and its objects: the ground truth of one image."""

    model_config = ConfigDict(frozen=True)

    background: Background = Field(default="white", description="the plain background colour")
    objects: tuple[ShapeObject, ...] = Field(description="the objects, 1–4, all different")


def shape_polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]] | None:
    """The polygon that draws ``shape`` in ``box`` (``None`` for the circle, an ellipse)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 - 1, y1 - y0 - 1
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if shape == "star":
        cx, cy = x0 + w / 2, y0 + h / 2
        points = []
        for i in range(10):
            radius = (w / 2 if i % 2 == 0 else w / 4.5) * 1.0
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + 0.1 * h + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: object
) -> None:
    """Draw ``shape`` filling ``box`` (exclusive ends) with ``fill``."""
    polygon = shape_polygon(shape, box)
    if polygon is None:
        draw.ellipse((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill)  # type: ignore[arg-type]
    else:
        draw.polygon(polygon, fill=fill)  # type: ignore[arg-type]


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image, flat colours and no anti-aliasing."""
    image = Image.new("RGB", (size, size), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.box(size), PALETTE[obj.colour])
    return image


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def _place(
    rng: random.Random, size: str, taken: Sequence[tuple[int, int, int, int]]
) -> ShapeObject | None:
    side = SIZE_PIXELS[size]
    margin = 2
    for _ in range(60):
        x0 = rng.randint(margin, IMAGE_SIZE - margin - side)
        y0 = rng.randint(margin, IMAGE_SIZE - margin - side)
        box = (x0, y0, x0 + side, y0 + side)
        if all(_boxes_apart(box, other) for other in taken):
            cx, cy = (x0 + side / 2) / IMAGE_SIZE, (y0 + side / 2) / IMAGE_SIZE
            return ShapeObject(shape="circle", colour="red", size=size, x=cx, y=cy)
    return None


def sample_scene(
    rng: random.Random,
    *,
    count: int | None = None,
    background: str | None = None,
    avoid_held_out: bool = False,
    count_weights: Sequence[float] = OBJECT_COUNT_WEIGHTS,
) -> Scene:
    """A random scene: 1–4 different objects (fewer more often) apart from each other.

    ``avoid_held_out`` draws again until no two objects form a pair of :data:`HELD_OUT_PAIRS`
    (what the training data does). ``count_weights`` weighs 1, 2, 3 and 4 objects.
    """
    while True:
        n = count if count is not None else rng.choices((1, 2, 3, 4), weights=count_weights)[0]
        bg = background or (
            "white" if rng.random() < 0.5 else rng.choice(("black", "gray", *COLOURS))
        )
        colours = [c for c in COLOURS if c != bg]
        kinds = rng.sample([(c, s) for c in colours for s in SHAPES], n)
        objects: list[ShapeObject] = []
        taken: list[tuple[int, int, int, int]] = []
        for colour, shape in kinds:
            size = rng.choice(SIZES) if n <= 2 else rng.choices(SIZES, weights=(2, 1))[0]
            placed = _place(rng, size, taken)
            if placed is None:
                break
            obj = placed.model_copy(update={"colour": colour, "shape": shape})
            objects.append(obj)
            taken.append(obj.box())
        if len(objects) < n:
            continue
        scene = Scene(background=bg, objects=tuple(objects))
        if avoid_held_out and has_held_out_pair(scene.objects):
            continue
        return scene


# --- held-out combinations -------------------------------------------------------------------


def _held_out_pairs() -> frozenset[frozenset[str]]:
    """About one pair of objects in eight, chosen by a fixed seed; every object is in some."""
    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    pairs = list(itertools.combinations(names, 2))
    rng = random.Random(2024)
    chosen = set(rng.sample(pairs, len(pairs) // 8))
    return frozenset(frozenset(p) for p in chosen)


#: Pairs of objects (``{"red circle", "blue star"}``) that never share a training caption.
HELD_OUT_PAIRS: frozenset[frozenset[str]] = _held_out_pairs()


def has_held_out_pair(objects: Sequence[ShapeObject]) -> bool:
    """Whether two of ``objects`` form a held-out pair."""
    names = [o.name for o in objects]
    return any(frozenset(p) in HELD_OUT_PAIRS for p in itertools.combinations(names, 2))


# --- captions --------------------------------------------------------------------------------

#: Every word a caption can use (the tokenizer of shapes-sd has one token for each).
WORDS: tuple[str, ...] = tuple(
    sorted(
        {
            *SHAPES,
            *COLOURS,
            *SIZES,
            *BACKGROUNDS,
            *["a", "an", "and", "of", "the", "to", "on", "in", "at", "from"],
            *["left", "right", "top", "bottom", "above", "below", "next"],
            *["background", "picture", "image", "center"],
        }
    )
)


def object_phrase(obj: ShapeObject, *, with_size: bool = False) -> str:
    """``"a red circle"``, ``"an orange star"`` or ``"a small red circle"``."""
    words = f"{obj.size} {obj.name}" if with_size else obj.name
    return ("an " if words[0] in "aeiou" else "a ") + words


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _apart(values: Sequence[float], gap: float = 0.12) -> bool:
    ordered = sorted(values)
    return all(b - a >= gap for a, b in itertools.pairwise(ordered))


def _where(obj: ShapeObject) -> str | None:
    if obj.x < 0.38:
        return "on the left"
    if obj.x > 0.62:
        return "on the right"
    if obj.y < 0.38:
        return "at the top"
    if obj.y > 0.62:
        return "at the bottom"
    return "in the center"


def caption(scene: Scene, rng: random.Random, *, partial: float = 0.0) -> str:
    """One natural caption of ``scene`` (chosen by ``rng`` among the templates that are true).

    Relations and orders are only used when the geometry makes them unambiguous. A caption names
    every object, except that with probability ``partial`` one of a scene of several names only
    some of them (at least one), as people's captions of real pictures do: a model trained only
    on exhaustive captions learns that "a red circle" means *nothing else*, and then draws one
    object for a whole canvas whose regions each ask for one.
    """
    objs = list(scene.objects)
    if partial and len(objs) > 1 and rng.random() < partial:
        kept = set(rng.sample(range(len(objs)), rng.randint(1, len(objs) - 1)))
        objs = [o for i, o in enumerate(objs) if i in kept]
    sized = rng.random() < 0.4
    phrase = [object_phrase(o, with_size=sized) for o in objs]
    choices: list[str] = []
    if len(objs) == 1:
        choices += [phrase[0], phrase[0], f"a picture of {phrase[0]}", f"an image of {phrase[0]}"]
        where = _where(objs[0])
        if where is not None:
            choices += [f"{phrase[0]} {where}"]
    else:
        order = list(range(len(objs)))
        rng.shuffle(order)
        choices.append(_join([phrase[i] for i in order]))
        if _apart([o.x for o in objs]):
            ltr = sorted(range(len(objs)), key=lambda i: objs[i].x)
            choices.append("from left to right, " + _join([phrase[i] for i in ltr]))
            if len(objs) == 2:
                a, b = ltr
                choices += [
                    f"{phrase[a]} to the left of {phrase[b]}",
                    f"{phrase[b]} to the right of {phrase[a]}",
                    f"{phrase[a]} on the left and {phrase[b]} on the right",
                ]
                if abs(objs[a].y - objs[b].y) < 0.2:
                    choices.append(f"{phrase[a]} next to {phrase[b]}")
        if _apart([o.y for o in objs]):
            ttb = sorted(range(len(objs)), key=lambda i: objs[i].y)
            choices.append("from top to bottom, " + _join([phrase[i] for i in ttb]))
            if len(objs) == 2:
                a, b = ttb
                choices += [
                    f"{phrase[a]} above {phrase[b]}",
                    f"{phrase[b]} below {phrase[a]}",
                    f"{phrase[a]} at the top and {phrase[b]} at the bottom",
                ]
    text = rng.choice(choices)
    if scene.background != "white" or rng.random() < 0.3:
        text += f" on a {scene.background} background"
    return text


def sample_training_example(
    rng: random.Random,
    *,
    partial: float = 0.0,
    count_weights: Sequence[float] = OBJECT_COUNT_WEIGHTS,
) -> tuple[Scene, str]:
    """A training scene (no held-out pair) and one of its captions (see :func:`caption`)."""
    scene = sample_scene(rng, avoid_held_out=True, count_weights=count_weights)
    return scene, caption(scene, rng, partial=partial)


def crop_scene(scene: Scene, box: tuple[int, int, int, int]) -> Scene | None:
    """What a viewer of the pixel rectangle ``box`` = ``(x0, y0, x1, y1)`` sees of ``scene``.

    The objects wholly inside, placed in the rectangle's own fractions; ``None`` when the
    rectangle cuts an object or holds none (its caption would be wrong or empty).
    """
    x0, y0, x1, y1 = box
    inside = []
    for obj in scene.objects:
        bx0, by0, bx1, by1 = obj.box()
        if bx1 <= x0 or bx0 >= x1 or by1 <= y0 or by0 >= y1:
            continue  # wholly outside
        if bx0 < x0 or bx1 > x1 or by0 < y0 or by1 > y1:
            return None  # cut by an edge
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        moved = {"x": (cx - x0) / (x1 - x0), "y": (cy - y0) / (y1 - y0)}
        inside.append(obj.model_copy(update=moved))
    if not inside:
        return None
    return Scene(background=scene.background, objects=tuple(inside))


def scene_array(scene: Scene) -> np.ndarray:
    """The rendered scene as ``uint8`` ``[H, W, 3]``."""
    return np.asarray(render(scene), dtype=np.uint8)
