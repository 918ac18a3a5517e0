"""What the editor draws for a plan: its kind, its text form and each region's or layer's box."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from rpg.models import LayerWarning, RegionPlan

__all__ = ["layer_warnings", "plan_view"]


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
        return {**common, **_canvas_view(plan)}
    return {**common, **_grid_view(plan)}


def _canvas_view(plan: RegionPlan) -> dict[str, Any]:
    """A canvas plan's part of the view: its layers bottom to top, each with its box."""
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
        "kind": "canvas",
        "split_ratio": "",
        "prompts": " BREAK ".join(layer.prompt for layer in plan.layers),
        "regions": [],
        "layers": layers,
    }


def _grid_view(plan: RegionPlan) -> dict[str, Any]:
    """A grid plan's part of the view: its text form and its regions with their address."""
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
        "kind": "grid",
        "split_ratio": plan.to_split_ratio(),
        "prompts": plan.to_prompt_text(include_base=False),
        "regions": regions,
        "layers": [],
    }
