"""The plan: where each prompt goes, as a grid of rows and regions or a canvas of layers."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, field_validator, model_validator

from rpg.errors import SplitRatioError
from rpg.layout import (
    check_finite_total,
    composite_layers,
    cumulative_bounds,
    edges_from_bounds,
    format_split_ratio,
    grid_of_boxes,
    parse_split_ratio,
    split_prompts,
)
from rpg.models.canvas import Layer, LayerWarning
from rpg.models.grid import Region, Row
from rpg.models.limits import DEFAULT_BASE_RATIO, MAX_LAYERS, MAX_PLAN_JSON_BYTES, MAX_PROMPT_CHARS
from rpg.models.validation import FROZEN, check_json_size

if TYPE_CHECKING:
    import numpy as np


class RegionPlan(BaseModel):
    """Where each prompt goes: a grid of rows and regions, or a canvas of layers.

    A *grid* plan (``rows``) tiles the canvas: rows top to bottom, regions left to right. A
    *canvas* plan (``layers``) stacks boxes and masks bottom to top over a background, which the
    base prompt paints (the user's whole prompt when there is no base prompt). Exactly one of
    the two is given.
    """

    model_config = FROZEN

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
        check_json_size(self, MAX_PLAN_JSON_BYTES, "the plan")
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
