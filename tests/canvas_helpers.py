"""Random canvas plans for the canvas attention tests: boxes, hard and soft masks, overlaps."""

from __future__ import annotations

import random

import numpy as np

from rpg.models import Layer, LayerMask, RegionPlan


def random_mask(rng: random.Random) -> LayerMask:
    """An ellipse or rectangle on a picture of random size; hard, feathered or translucent."""
    h, w = rng.randint(3, 40), rng.randint(3, 40)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(1, h), rng.uniform(1, w)
    if rng.random() < 0.5:
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    else:
        inside = (abs(yy - cy) <= ry / 2) & (abs(xx - cx) <= rx / 2)
    if not inside.any():
        inside[int(cy) % h, int(cx) % w] = True
    kind = rng.choice(["hard", "soft", "translucent"])
    values = inside.astype(np.float64)
    if kind == "translucent":
        values *= rng.choice([0.25, 0.5, 0.8])
    soft_edge = rng.choice([0.03, 0.1]) if kind == "soft" else 0.0
    return LayerMask.from_image(values, soft_edge=soft_edge)


def random_box(rng: random.Random) -> tuple[float, float, float, float]:
    x0, x1 = sorted(rng.sample(range(11), 2))
    y0, y1 = sorted(rng.sample(range(11), 2))
    return x0 / 10, y0 / 10, x1 / 10, y1 / 10


def random_canvas(rng: random.Random, *, base: bool, soft: bool | None = None) -> RegionPlan:
    """Up to 4 layers over a background. ``soft=False``: boxes only (hard); ``True``: at least
    one mask; ``None``: either. Sometimes a full-canvas layer, sometimes one covered by a later
    box, per-layer base weights or the plan's ratio."""
    n = rng.randint(1, 4)
    layers = []
    for i in range(n):
        use_mask = soft if soft is not None else rng.random() < 0.5
        if soft and i > 0:
            use_mask = rng.random() < 0.6
        beta = rng.choice([None, None, 0.0, round(rng.uniform(0.1, 0.9), 2)]) if base else None
        if use_mask:
            layers.append(Layer(prompt=f"layer {i}", mask=random_mask(rng), base_weight=beta))
        else:
            box = (0.0, 0.0, 1.0, 1.0) if rng.random() < 0.1 else random_box(rng)
            layers.append(Layer(prompt=f"layer {i}", box=box, base_weight=beta))
    if rng.random() < 0.2:  # a layer covered completely by the one above it
        box = random_box(rng)
        layers[-1:] = [
            Layer(prompt="covered", box=box),
            Layer(prompt="cover", box=box),
        ]
    return RegionPlan(
        layers=layers,
        base_prompt="the base" if base else None,
        base_ratio=round(rng.uniform(0.1, 0.8), 2),
    )
