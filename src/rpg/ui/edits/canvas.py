"""Edits of a canvas plan: box and mask layers, painted bottom (0) to top.

Layers are addressed by their index from the bottom, the order in which they are painted. Every
function returns a new, valid plan or raises :class:`~rpg.ui.edits.errors.PlanEditError` with a
sentence for the user; the plan it was given is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from rpg.models import LayerMask, RegionPlan
from rpg.ui.edits.convert import to_canvas, to_grid
from rpg.ui.edits.errors import PlanEditError, validated

__all__ = [
    "LAYER_EDITS",
    "NEW_LAYER_PROMPT",
    "add_layer",
    "apply_layer_edit",
    "clear_layer_mask",
    "delete_layer",
    "lower_layer",
    "raise_layer",
    "set_layer_box",
    "set_layer_mask",
]


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
    return validated(data)


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
