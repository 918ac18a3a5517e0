"""Edits of a grid plan (rows of regions), and a grid plan from the editor's text fields.

Regions are addressed by ``(row, col)``: row index top to bottom, region index left to right.
Every function returns a new, valid plan or raises :class:`~rpg.ui.edits.errors.PlanEditError`
with a sentence for the user; the plan it was given is never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from rpg.cli import format_error
from rpg.models import DEFAULT_BASE_RATIO, RegionPlan
from rpg.ui.edits.errors import PlanEditError, validated

__all__ = [
    "EDITS",
    "add_region",
    "add_row",
    "apply_edit",
    "delete_region",
    "delete_row",
    "merge_right",
    "merge_row_down",
    "plan_from_text",
    "split_region",
    "split_row",
]


def _rows(plan: RegionPlan) -> list[dict[str, Any]]:
    """The plan's rows as mutable lists of dicts, whatever sequence type the model holds."""
    return [
        {**row, "regions": [dict(region) for region in row["regions"]]}
        for row in plan.model_dump()["rows"]
    ]


def _rebuild(plan: RegionPlan, rows: list[dict[str, Any]]) -> RegionPlan:
    return validated({**plan.model_dump(), "rows": rows})


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
    ratio = _base_ratio(base_ratio)
    try:
        plan = RegionPlan.from_split_ratio(
            split_ratio, prompts, base_prompt=base_prompt or None, base_ratio=ratio
        )
    except (ValidationError, ValueError) as exc:
        raise PlanEditError(format_error(exc)) from None
    if previous is not None and len(previous.regions) == len(plan.regions):
        plan = _keep_region_settings(plan, previous)
    return plan


def _base_ratio(value: float | str | None) -> float:
    """The base-ratio field as a number from 0 to 1 (empty: the default)."""
    ratio = DEFAULT_BASE_RATIO
    if value not in (None, ""):
        try:
            ratio = float(value)
        except ValueError:
            raise PlanEditError(f"base ratio must be a number from 0 to 1, got {value!r}") from None
    if not 0 <= ratio <= 1:
        raise PlanEditError(f"base ratio must be from 0 to 1, got {ratio:g}")
    return ratio


def _keep_region_settings(plan: RegionPlan, previous: RegionPlan) -> RegionPlan:
    """``plan`` with the negative prompts and base weights of ``previous``, region by region."""
    data = plan.model_dump()
    before = iter(previous.regions)
    for row in data["rows"]:
        for region in row["regions"]:
            old = next(before)
            region.update(negative_prompt=old.negative_prompt, base_weight=old.base_weight)
    return RegionPlan.model_validate(data)
