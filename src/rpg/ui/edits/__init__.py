"""Edits the plan editor makes, as pure functions on :class:`~rpg.models.RegionPlan`.

The browser only draws and sends intentions ("split region 1 of row 0"); every change of the
plan is made here and validated by the plan model itself, so the editor, the CLI and the library
share one notion of a valid plan. A function either returns a new, valid plan or raises
:class:`PlanEditError` with a sentence for the user; the plan it was given is never changed
(plans are frozen), so the editor always keeps its last valid plan.

Regions of a grid plan are addressed by ``(row, col)``: row index top to bottom, region index
left to right. Layers of a canvas plan are addressed by their index from the bottom (0) to the top,
the order in which they are painted.

The edits live by kind: :mod:`~rpg.ui.edits.grid` (rows and regions, and a grid from the text
fields), :mod:`~rpg.ui.edits.canvas` (layers), :mod:`~rpg.ui.edits.convert` (grid ⇄ canvas) and
:mod:`~rpg.ui.edits.view` (what the page draws); this package names them all.
"""

from __future__ import annotations

from rpg.ui.edits.canvas import (
    LAYER_EDITS,
    NEW_LAYER_PROMPT,
    add_layer,
    apply_layer_edit,
    clear_layer_mask,
    delete_layer,
    lower_layer,
    raise_layer,
    set_layer_box,
    set_layer_mask,
)
from rpg.ui.edits.convert import to_canvas, to_grid
from rpg.ui.edits.errors import PlanEditError
from rpg.ui.edits.grid import (
    EDITS,
    add_region,
    add_row,
    apply_edit,
    delete_region,
    delete_row,
    merge_right,
    merge_row_down,
    plan_from_text,
    split_region,
    split_row,
)
from rpg.ui.edits.view import layer_warnings, plan_view

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
