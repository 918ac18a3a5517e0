"""Plan edits the browser editor asks for (rpg.ui.edits): pure functions on RegionPlan."""

from __future__ import annotations

import pytest

from rpg.models import RegionPlan
from rpg.ui.edits import (
    PlanEditError,
    add_region,
    add_row,
    apply_edit,
    delete_region,
    delete_row,
    merge_right,
    merge_row_down,
    plan_from_text,
    plan_view,
    split_region,
    split_row,
)

TWO_ROWS = RegionPlan.from_split_ratio("1,1,1;2,1,3", "a BREAK b BREAK c BREAK d")


def test_split_region_halves_its_width_and_keeps_its_prompt() -> None:
    plan = split_region(TWO_ROWS, 1, 1)
    assert list(plan.prompts) == ["a", "b", "c", "d", "d"]
    assert plan.rows[1].regions[1].width == plan.rows[1].regions[2].width == 1.5
    assert plan.to_split_ratio() == "1,1,1;2,1,1.5,1.5"
    assert list(TWO_ROWS.prompts) == ["a", "b", "c", "d"]  # the original is untouched


def test_merge_right_adds_widths_and_joins_prompts() -> None:
    plan = merge_right(TWO_ROWS, 0, 0)
    assert list(plan.prompts) == ["a, b", "c", "d"]
    assert plan.rows[0].regions[0].width == 2
    with pytest.raises(PlanEditError, match="last one of row 1"):
        merge_right(TWO_ROWS, 0, 1)


def test_delete_region_gives_its_width_to_a_neighbour_and_drops_an_empty_row() -> None:
    plan = delete_region(TWO_ROWS, 1, 0)
    assert list(plan.prompts) == ["a", "b", "d"]
    assert [r.width for r in plan.rows[1].regions] == [4]
    single = RegionPlan.from_split_ratio("1;1", "top BREAK bottom")
    assert list(delete_region(single, 0, 0).prompts) == ["bottom"]
    with pytest.raises(PlanEditError, match="at least one region"):
        delete_region(RegionPlan.single("x"), 0, 0)


def test_rows_add_split_merge_delete() -> None:
    added = add_row(TWO_ROWS, 0)
    assert [len(r.regions) for r in added.rows] == [2, 1, 2]
    assert added.rows[1].height == 1.5 and added.rows[1].regions[0].prompt == "a"
    split = split_row(TWO_ROWS, 1)
    assert [r.height for r in split.rows] == [1, 1, 1]
    assert list(split.prompts) == ["a", "b", "c", "d", "c", "d"]
    merged = merge_row_down(TWO_ROWS, 0)
    assert list(merged.prompts) == ["a, c", "b, d"] and merged.rows[0].height == 3
    assert list(delete_row(TWO_ROWS, 0).prompts) == ["c", "d"]
    assert delete_row(TWO_ROWS, 0).rows[0].height == 3
    with pytest.raises(PlanEditError, match="bottom row"):
        merge_row_down(TWO_ROWS, 1)
    uneven = add_region(TWO_ROWS, 0)
    assert list(uneven.prompts) == ["a", "b", "b", "c", "d"]
    with pytest.raises(PlanEditError, match="have 3 and 2 regions"):
        merge_row_down(uneven, 0)


def test_addresses_and_names_are_checked() -> None:
    with pytest.raises(PlanEditError, match="no row 3"):
        split_region(TWO_ROWS, 2, 0)
    with pytest.raises(PlanEditError, match="row 1 has no region 5"):
        apply_edit(TWO_ROWS, "split_region", 0, 4)
    with pytest.raises(PlanEditError, match="unknown edit 'explode'"):
        apply_edit(TWO_ROWS, "explode", 0, 0)


def test_plan_from_text_round_trips_and_keeps_region_settings() -> None:
    view = plan_view(TWO_ROWS)
    again = plan_from_text(view["split_ratio"], view["prompts"])
    assert again == TWO_ROWS
    tuned = RegionPlan.model_validate(
        {
            **TWO_ROWS.model_dump(),
            "rows": [
                {
                    **TWO_ROWS.rows[0].model_dump(),
                    "regions": [
                        {"prompt": "a", "negative_prompt": "blur", "base_weight": 0.7},
                        {"prompt": "b"},
                    ],
                },
                TWO_ROWS.rows[1].model_dump(),
            ],
        }
    )
    kept = plan_from_text("1,2,1;2,1,3", "A BREAK b BREAK c BREAK d", previous=tuned)
    assert kept.regions[0].prompt == "A" and kept.regions[0].negative_prompt == "blur"
    assert kept.regions[0].base_weight == 0.7 and kept.rows[0].regions[0].width == 2


@pytest.mark.parametrize(
    ("ratio", "prompts", "base_ratio", "message"),
    [
        ("1,x", "a BREAK b", None, "1,x"),
        ("1,1", "a", None, "2 regions but 1 prompt"),
        ("1,1", "a BREAK ", None, "regional prompt 2 of 2 is empty"),
        ("1,1", "a BREAK b", "2", "base ratio must be from 0 to 1"),
        ("1,1", "a BREAK b", "much", "must be a number"),
    ],
)
def test_plan_from_text_errors_are_one_readable_line(
    ratio: str, prompts: str, base_ratio: str | None, message: str
) -> None:
    with pytest.raises(PlanEditError, match=message) as info:
        plan_from_text(ratio, prompts, base_ratio=base_ratio)
    assert "\n" not in str(info.value) and "pydantic" not in str(info.value)


def test_plan_view_lists_every_region_with_its_box() -> None:
    view = plan_view(TWO_ROWS.model_copy(update={"base_prompt": "four things"}))
    assert view["split_ratio"] == "1,1,1;2,1,3"
    assert view["prompts"] == "a BREAK b BREAK c BREAK d"
    assert view["base_prompt"] == "four things"
    assert [(r["row"], r["col"]) for r in view["regions"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert view["regions"][3]["box"] == pytest.approx((0.25, 1 / 3, 1.0, 1.0))
