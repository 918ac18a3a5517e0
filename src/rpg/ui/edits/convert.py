"""A grid plan as a canvas of layers, and a canvas back as a grid when its boxes tile it in rows.

Both directions keep the picture: the same rectangles, prompts, negative prompts and base
weights, so the converted plan renders the same image.
"""

from __future__ import annotations

import math
from typing import Any

from rpg.layout import Box
from rpg.models import RegionPlan
from rpg.ui.edits.errors import PlanEditError, validated

__all__ = ["to_canvas", "to_grid"]


def to_canvas(plan: RegionPlan) -> RegionPlan:
    """The grid's regions as box layers (the same rectangles: it renders the same image)."""
    return plan if plan.is_canvas else plan.to_canvas()


#: Two box edges closer than this (in canvas fractions) are the same edge.
_EDGE_TOLERANCE = 1e-6


def _tiles(spans: list[tuple[float, float]]) -> bool:
    """Whether sorted ``(start, end)`` spans cover 0..1 with no gap and no overlap."""
    at = 0.0
    for start, end in spans:
        if abs(start - at) > _EDGE_TOLERANCE:
            return False
        at = end
    return abs(at - 1.0) <= _EDGE_TOLERANCE


def _weights(sizes: list[float]) -> list[float]:
    """Sizes as small whole numbers when they are simple fractions (1/3, 1/3, 1/3 -> 1, 1, 1)."""
    from fractions import Fraction

    fracs = [Fraction(s).limit_denominator(100) for s in sizes]
    if any(abs(float(f) - s) > _EDGE_TOLERANCE for f, s in zip(fracs, sizes, strict=True)):
        return [round(s, 6) for s in sizes]
    scale = math.lcm(*(f.denominator for f in fracs))
    whole = [int(f * scale) for f in fracs]
    common = math.gcd(*whole)
    return [float(w // common) for w in whole]


def to_grid(plan: RegionPlan) -> RegionPlan:
    """The canvas as a grid, when its layers are boxes that tile it in rows.

    Each row is a band of boxes of the same height, side by side from the left edge to the
    right edge, and the bands stack from the top edge to the bottom edge; anything else (a mask,
    an overlap, a gap, a box across two rows) cannot be said by a grid and is refused with where.
    """
    if not plan.is_canvas:
        return plan
    bands = _bands(plan)
    rows: list[dict[str, Any]] = [{"regions": _row_regions(plan, band)} for band in bands]
    heights = _weights([band[0][1][3] - band[0][1][1] for band in bands])
    for row, height in zip(rows, heights, strict=True):
        row["height"] = height
    data = plan.model_dump()
    data.pop("layers", None)
    data["rows"] = rows
    return validated(data)


def _bands(plan: RegionPlan) -> list[list[tuple[int, Box]]]:
    """The layers' ``(index, box)`` grouped by top and bottom edge, the bands top to bottom.

    Refused unless every layer is a box and the bands stack from the top edge to the bottom edge.
    """
    bands: dict[tuple[float, float], list[tuple[int, Box]]] = {}
    for i, layer in enumerate(plan.layers):
        if layer.box is None:
            raise PlanEditError(
                f"layer {i + 1} is shaped by a mask; only box layers can become a grid"
            )
        x0, y0, x1, y1 = layer.box
        key = (round(y0 / _EDGE_TOLERANCE), round(y1 / _EDGE_TOLERANCE))
        bands.setdefault(key, []).append((i, (x0, y0, x1, y1)))
    ordered = sorted(bands.values(), key=lambda band: band[0][1][1])
    if not _tiles([(band[0][1][1], band[0][1][3]) for band in ordered]):
        raise PlanEditError(
            "the layers do not stack in rows from the top edge to the bottom edge (a gap, an "
            "overlap or a box across two rows); only layers that tile the canvas become a grid"
        )
    return ordered


def _row_regions(plan: RegionPlan, band: list[tuple[int, Box]]) -> list[dict[str, Any]]:
    """One band's layers as a grid row's regions, left to right; refused unless they fill it."""
    band.sort(key=lambda item: item[1][0])
    if not _tiles([(box[0], box[2]) for _, box in band]):
        top = band[0][1][1]
        raise PlanEditError(
            f"the boxes of the row starting {top:.0%} down do not fill it from the left edge "
            "to the right edge without gaps or overlaps; only layers that tile the canvas "
            "become a grid"
        )
    widths = _weights([box[2] - box[0] for _, box in band])
    regions = []
    for (i, _), width in zip(band, widths, strict=True):
        layer = plan.layers[i]
        regions.append(
            {
                "prompt": layer.prompt,
                "width": width,
                "negative_prompt": layer.negative_prompt,
                "base_weight": layer.base_weight,
            }
        )
    return regions
