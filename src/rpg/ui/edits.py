"""Edits the plan editor makes, as pure functions on :class:`~rpg.models.RegionPlan`.

The browser only draws and sends intentions ("split region 1 of row 0"); every change of the
plan is made here and validated by the plan model itself, so the editor, the CLI and the library
share one notion of a valid plan. A function either returns a new, valid plan or raises
:class:`PlanEditError` with a sentence for the user; the plan it was given is never changed
(plans are frozen), so the editor always keeps its last valid plan.

Regions of a grid plan are addressed by ``(row, col)``: row index top to bottom, region index
left to right. Layers of a canvas plan are addressed by their index from the bottom (0) to the top,
the order in which they are painted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.layout import Box
from rpg.models import DEFAULT_BASE_RATIO, LayerMask, LayerWarning, RegionPlan

__all__ = [
    "EDITS",
    "LAYER_EDITS",
    "NEW_LAYER_PROMPT",
    "PlanEditError",
    "add_layer",
    "add_region",
    "add_row",
    "apply_edit",
    "apply_layer_edit",
    "clear_layer_mask",
    "delete_layer",
    "delete_region",
    "delete_row",
    "layer_warnings",
    "lower_layer",
    "merge_right",
    "merge_row_down",
    "plan_from_text",
    "plan_view",
    "raise_layer",
    "set_layer_box",
    "set_layer_mask",
    "split_region",
    "split_row",
    "to_canvas",
    "to_grid",
]


class PlanEditError(RPGError, ValueError):
    """An edit that would not give a valid plan; the message says why and what to do."""


def _rows(plan: RegionPlan) -> list[dict[str, Any]]:
    """The plan's rows as mutable lists of dicts, whatever sequence type the model holds."""
    return [
        {**row, "regions": [dict(region) for region in row["regions"]]}
        for row in plan.model_dump()["rows"]
    ]


def _rebuild(plan: RegionPlan, rows: list[dict[str, Any]]) -> RegionPlan:
    try:
        return RegionPlan.model_validate({**plan.model_dump(), "rows": rows})
    except ValidationError as exc:
        raise PlanEditError(format_error(exc)) from None


def _check(plan: RegionPlan, row: int, col: int | None = None) -> None:
    if plan.is_canvas:
        raise PlanEditError(
            "this plan is a canvas of layers; rows and regions are edits of a grid plan (use the "
            "layer tools, or turn the layers into a grid first)"
        )
    if not 0 <= row < len(plan.rows):
        raise PlanEditError(f"there is no row {row + 1}; the plan has {len(plan.rows)}")
    if col is not None and not 0 <= col < len(plan.rows[row].regions):
        n = len(plan.rows[row].regions)
        raise PlanEditError(f"row {row + 1} has no region {col + 1}; it has {n}")


def _join(a: str, b: str) -> str:
    return a if a.strip() == b.strip() else f"{a}, {b}"


def split_region(plan: RegionPlan, row: int, col: int) -> RegionPlan:
    """Cut a region into two side by side, each half as wide, both keeping its prompt."""
    _check(plan, row, col)
    rows = _rows(plan)
    region = rows[row]["regions"][col]
    half = region["width"] / 2
    rows[row]["regions"][col : col + 1] = [{**region, "width": half}, {**region, "width": half}]
    return _rebuild(plan, rows)


def add_region(plan: RegionPlan, row: int, prompt: str | None = None) -> RegionPlan:
    """Append a region at the right end of a row, as wide as the row's average region."""
    _check(plan, row)
    rows = _rows(plan)
    regions = rows[row]["regions"]
    width = sum(r["width"] for r in regions) / len(regions)
    text = prompt if prompt is not None else regions[-1]["prompt"]
    regions.append({"prompt": text, "width": width})
    return _rebuild(plan, rows)


def merge_right(plan: RegionPlan, row: int, col: int) -> RegionPlan:
    """Merge a region with its right neighbour: one region, both widths, both prompts."""
    _check(plan, row, col)
    rows = _rows(plan)
    regions = rows[row]["regions"]
    if col + 1 >= len(regions):
        raise PlanEditError(
            f"region {col + 1} is the last one of row {row + 1}; select the region to its left "
            "to merge these two"
        )
    left, right = regions[col], regions[col + 1]
    merged = {
        **left,
        "prompt": _join(left["prompt"], right["prompt"]),
        "width": left["width"] + right["width"],
    }
    regions[col : col + 2] = [merged]
    return _rebuild(plan, rows)


def delete_region(plan: RegionPlan, row: int, col: int) -> RegionPlan:
    """Delete a region; its neighbour takes its width (the row goes when it was its only one)."""
    _check(plan, row, col)
    rows = _rows(plan)
    regions = rows[row]["regions"]
    if len(regions) == 1:
        return delete_row(plan, row)
    gone = regions.pop(col)
    regions[max(0, col - 1)]["width"] += gone["width"]
    return _rebuild(plan, rows)


def add_row(plan: RegionPlan, after: int, prompt: str | None = None) -> RegionPlan:
    """Insert a row of one region below row ``after``, as tall as the average row."""
    _check(plan, after)
    rows = _rows(plan)
    height = sum(r["height"] for r in rows) / len(rows)
    text = prompt if prompt is not None else rows[after]["regions"][0]["prompt"]
    rows.insert(after + 1, {"height": height, "regions": [{"prompt": text}]})
    return _rebuild(plan, rows)


def split_row(plan: RegionPlan, row: int) -> RegionPlan:
    """Cut a row into two rows, each half as tall, both with the row's regions."""
    _check(plan, row)
    rows = _rows(plan)
    half = rows[row]["height"] / 2
    top = {**rows[row], "height": half}
    bottom = {"height": half, "regions": [dict(r) for r in rows[row]["regions"]]}
    rows[row : row + 1] = [top, bottom]
    return _rebuild(plan, rows)


def merge_row_down(plan: RegionPlan, row: int) -> RegionPlan:
    """Merge a row with the row below: both heights; region prompts joined position by position.

    The two rows must have the same number of regions (the upper row's widths are kept).
    """
    _check(plan, row)
    rows = _rows(plan)
    if row + 1 >= len(rows):
        raise PlanEditError(
            f"row {row + 1} is the bottom row; select the row above it to merge these two"
        )
    upper, lower = rows[row], rows[row + 1]
    if len(upper["regions"]) != len(lower["regions"]):
        raise PlanEditError(
            f"rows {row + 1} and {row + 2} have {len(upper['regions'])} and "
            f"{len(lower['regions'])} regions; merge or split regions until they match"
        )
    merged = {
        "height": upper["height"] + lower["height"],
        "regions": [
            {**a, "prompt": _join(a["prompt"], b["prompt"])}
            for a, b in zip(upper["regions"], lower["regions"], strict=True)
        ],
    }
    rows[row : row + 2] = [merged]
    return _rebuild(plan, rows)


def delete_row(plan: RegionPlan, row: int) -> RegionPlan:
    """Delete a row; the row above (or below, for the top row) takes its height."""
    _check(plan, row)
    rows = _rows(plan)
    if len(rows) == 1:
        raise PlanEditError("a plan needs at least one region; edit this one instead")
    gone = rows.pop(row)
    rows[max(0, row - 1)]["height"] += gone["height"]
    return _rebuild(plan, rows)


# ---------------------------------------------------------------------------- canvas plans

#: The prompt of a layer just drawn, until the user types its own.
NEW_LAYER_PROMPT = "new layer"


def _layers(plan: RegionPlan) -> list[dict[str, Any]]:
    """The canvas plan's layers as mutable dicts, bottom to top."""
    if not plan.is_canvas:
        raise PlanEditError(
            "this plan is a grid of rows and regions; convert it to layers first (Canvas mode)"
        )
    return [dict(layer) for layer in plan.model_dump()["layers"]]


def _rebuild_layers(
    plan: RegionPlan | None, layers: list[dict[str, Any]], **fields: Any
) -> RegionPlan:
    data = plan.model_dump() if plan is not None else {}
    data.pop("rows", None)
    data.update(fields, layers=layers)
    try:
        return RegionPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanEditError(format_error(exc)) from None


def _check_layer(layers: Sequence[Any], layer: int) -> None:
    if not 0 <= layer < len(layers):
        raise PlanEditError(
            f"there is no layer {layer + 1}; the plan has {len(layers)} "
            f"layer{'s' if len(layers) != 1 else ''}"
        )


def _box(box: Sequence[float] | None, what: str = "the box") -> list[float]:
    if box is None or len(box) != 4:
        raise PlanEditError(f"{what} must be four numbers x0, y0, x1, y1 (fractions of the canvas)")
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        raise PlanEditError(f"{what} must be finite numbers, got {list(box)}")
    return values


def add_layer(
    plan: RegionPlan | None,
    box: Sequence[float],
    prompt: str | None = None,
    *,
    base_prompt: str | None = None,
) -> RegionPlan:
    """Put a new box layer on top of the others (a new canvas plan when ``plan`` is ``None``).

    ``base_prompt`` is the background of a new plan; an existing plan keeps its own.
    """
    layers = _layers(plan) if plan is not None else []
    text = prompt if prompt is not None and prompt.strip() else NEW_LAYER_PROMPT
    layers.append({"prompt": text, "box": _box(box)})
    if plan is None:
        return _rebuild_layers(None, layers, base_prompt=base_prompt or None)
    return _rebuild_layers(plan, layers)


def set_layer_box(plan: RegionPlan, layer: int, box: Sequence[float]) -> RegionPlan:
    """Move or resize a box layer: its box becomes ``box`` (fractions of the canvas)."""
    layers = _layers(plan)
    _check_layer(layers, layer)
    if layers[layer].get("mask") is not None:
        raise PlanEditError(
            f"layer {layer + 1} is shaped by a mask image; remove its mask to give it a box"
        )
    layers[layer]["box"] = _box(box)
    return _rebuild_layers(plan, layers)


def delete_layer(plan: RegionPlan, layer: int) -> RegionPlan:
    """Remove a layer; the layers above it move down one place."""
    layers = _layers(plan)
    _check_layer(layers, layer)
    if len(layers) == 1:
        raise PlanEditError("a canvas plan needs at least one layer; edit this one instead")
    del layers[layer]
    return _rebuild_layers(plan, layers)


def raise_layer(plan: RegionPlan, layer: int) -> RegionPlan:
    """Move a layer one place up: it now covers the layer that was above it."""
    layers = _layers(plan)
    _check_layer(layers, layer)
    if layer == len(layers) - 1:
        raise PlanEditError(f"layer {layer + 1} is already the top layer")
    layers[layer], layers[layer + 1] = layers[layer + 1], layers[layer]
    return _rebuild_layers(plan, layers)


def lower_layer(plan: RegionPlan, layer: int) -> RegionPlan:
    """Move a layer one place down: the layer that was below it now covers it."""
    layers = _layers(plan)
    _check_layer(layers, layer)
    if layer == 0:
        raise PlanEditError(f"layer {layer + 1} is already the bottom layer")
    layers[layer], layers[layer - 1] = layers[layer - 1], layers[layer]
    return _rebuild_layers(plan, layers)


def set_layer_mask(plan: RegionPlan, layer: int, mask: LayerMask) -> RegionPlan:
    """Shape a layer by a mask image instead of its box."""
    layers = _layers(plan)
    _check_layer(layers, layer)
    layers[layer]["mask"] = mask.model_dump(mode="json")
    layers[layer]["box"] = None
    return _rebuild_layers(plan, layers)


def clear_layer_mask(plan: RegionPlan, layer: int) -> RegionPlan:
    """Give a mask layer back a box: the box around what its mask painted."""
    layers = _layers(plan)
    _check_layer(layers, layer)
    data = layers[layer].get("mask")
    if data is None:
        raise PlanEditError(f"layer {layer + 1} has no mask; it is shaped by its box")
    layers[layer]["box"] = list(LayerMask.model_validate(data).bounding_box())
    layers[layer]["mask"] = None
    return _rebuild_layers(plan, layers)


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
    rows: list[dict[str, Any]] = []
    for band in ordered:
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
        rows.append({"regions": regions})
    heights = _weights([band[0][1][3] - band[0][1][1] for band in ordered])
    for row, height in zip(rows, heights, strict=True):
        row["height"] = height
    data = plan.model_dump()
    data.pop("layers", None)
    data["rows"] = rows
    try:
        return RegionPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanEditError(format_error(exc)) from None


#: The edits the editor's buttons name, by the name the browser sends.
EDITS: dict[str, Callable[..., RegionPlan]] = {
    "split_region": lambda plan, row, col: split_region(plan, row, col),
    "add_region": lambda plan, row, col: add_region(plan, row),
    "merge_right": lambda plan, row, col: merge_right(plan, row, col),
    "delete_region": lambda plan, row, col: delete_region(plan, row, col),
    "add_row": lambda plan, row, col: add_row(plan, row),
    "split_row": lambda plan, row, col: split_row(plan, row),
    "merge_row_down": lambda plan, row, col: merge_row_down(plan, row),
    "delete_row": lambda plan, row, col: delete_row(plan, row),
}


def apply_edit(plan: RegionPlan, name: str, row: int, col: int) -> RegionPlan:
    """Apply the edit called ``name`` (a key of :data:`EDITS`) at region ``(row, col)``."""
    try:
        edit = EDITS[name]
    except KeyError:
        raise PlanEditError(f"unknown edit {name!r}; known: {', '.join(EDITS)}") from None
    return edit(plan, row, col)


#: The canvas edits the editor sends, by name: ``f(plan, layer, box, mask)``.
LAYER_EDITS: dict[str, Callable[..., RegionPlan]] = {
    "add_layer": lambda plan, layer, box, mask: add_layer(plan, _need(box, "add_layer")),
    "set_box": lambda plan, layer, box, mask: set_layer_box(plan, layer, _need(box, "set_box")),
    "delete_layer": lambda plan, layer, box, mask: delete_layer(plan, layer),
    "raise_layer": lambda plan, layer, box, mask: raise_layer(plan, layer),
    "lower_layer": lambda plan, layer, box, mask: lower_layer(plan, layer),
    "set_mask": lambda plan, layer, box, mask: set_layer_mask(plan, layer, _need(mask, "set_mask")),
    "clear_mask": lambda plan, layer, box, mask: clear_layer_mask(plan, layer),
    "to_canvas": lambda plan, layer, box, mask: to_canvas(plan),
    "to_grid": lambda plan, layer, box, mask: to_grid(plan),
}


def _need(value: Any, edit: str) -> Any:
    if value is None:
        what = "mask" if edit == "set_mask" else "box"
        raise PlanEditError(f"the {edit} edit needs a {what}")
    return value


def apply_layer_edit(
    plan: RegionPlan,
    name: str,
    layer: int = 0,
    *,
    box: Sequence[float] | None = None,
    mask: LayerMask | None = None,
) -> RegionPlan:
    """Apply the canvas edit called ``name`` (a key of :data:`LAYER_EDITS`) to ``layer``."""
    try:
        edit = LAYER_EDITS[name]
    except KeyError:
        raise PlanEditError(f"unknown edit {name!r}; known: {', '.join(LAYER_EDITS)}") from None
    return edit(plan, layer, box, mask)


def plan_from_text(
    split_ratio: str,
    prompts: str,
    *,
    base_prompt: str | None = None,
    base_ratio: float | str | None = None,
    previous: RegionPlan | None = None,
) -> RegionPlan:
    """A plan from the split-ratio and ``BREAK``-prompts fields of the editor.

    Per-region negative prompts and base weights of ``previous`` are kept when the number of
    regions is unchanged (the text fields do not show them, so retyping a ratio must not drop
    them).
    """
    ratio = DEFAULT_BASE_RATIO
    if base_ratio not in (None, ""):
        try:
            ratio = float(base_ratio)
        except ValueError:
            raise PlanEditError(
                f"base ratio must be a number from 0 to 1, got {base_ratio!r}"
            ) from None
    if not 0 <= ratio <= 1:
        raise PlanEditError(f"base ratio must be from 0 to 1, got {ratio:g}")
    try:
        plan = RegionPlan.from_split_ratio(
            split_ratio, prompts, base_prompt=base_prompt or None, base_ratio=ratio
        )
    except (ValidationError, ValueError) as exc:
        raise PlanEditError(format_error(exc)) from None
    if previous is not None and len(previous.regions) == len(plan.regions):
        data = plan.model_dump()
        before = iter(previous.regions)
        for row in data["rows"]:
            for region in row["regions"]:
                old = next(before)
                region.update(negative_prompt=old.negative_prompt, base_weight=old.base_weight)
        plan = RegionPlan.model_validate(data)
    return plan


def layer_warnings(plan: RegionPlan, width: int, height: int, factor: int) -> list[str]:
    """The plan's warnings for layers that paint nothing on a ``width × height`` image.

    ``factor`` is the model's pixels per latent cell or image token; the messages are the
    :class:`~rpg.models.LayerWarning` texts rendering would print.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayerWarning)
        plan.warn_unpainted(height, width, factor=factor)
    return [str(w.message) for w in caught if issubclass(w.category, LayerWarning)]


def plan_view(
    plan: RegionPlan, size: tuple[int, int] | None = None, factor: int = 8
) -> dict[str, Any]:
    """What the editor draws: the plan, its kind, its text form and each region's or layer's box.

    A grid plan lists ``regions`` (with their ``(row, col)`` address); a canvas plan lists
    ``layers`` bottom to top (with their box, or ``mask: true`` and the box around the mask).
    With the image ``size`` ``(width, height)``, ``warnings`` names the layers that would paint
    nothing there (covered by the layers above, or smaller than one ``factor``-pixel cell).
    """
    common = {
        "plan": plan.model_dump(mode="json"),
        "base_prompt": plan.base_prompt or "",
        "base_ratio": plan.base_ratio,
        "warnings": layer_warnings(plan, *size, factor) if size and plan.is_canvas else [],
    }
    if plan.is_canvas:
        layers = []
        for i, layer in enumerate(plan.layers):
            layers.append(
                {
                    "index": i,
                    "box": layer.bounding_box,
                    "mask": layer.mask is not None,
                    "prompt": layer.prompt,
                }
            )
        return {
            **common,
            "kind": "canvas",
            "split_ratio": "",
            "prompts": " BREAK ".join(layer.prompt for layer in plan.layers),
            "regions": [],
            "layers": layers,
        }
    boxes = plan.boxes()
    regions: list[Mapping[str, Any]] = []
    index = 0
    for r, row in enumerate(plan.rows):
        for c, region in enumerate(row.regions):
            regions.append(
                {"row": r, "col": c, "box": boxes[index], "prompt": region.prompt, "index": index}
            )
            index += 1
    return {
        **common,
        "kind": "grid",
        "split_ratio": plan.to_split_ratio(),
        "prompts": plan.to_prompt_text(include_base=False),
        "regions": regions,
        "layers": [],
    }
