"""Canvas-mode edits of the browser editor (rpg.ui.edits): pure functions on canvas plans."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image, ImageDraw

from rpg.models import LayerMask, RegionPlan
from rpg.ui.bodies import MAX_TEXT_CHARS, TextTooLong, check_text_sizes
from rpg.ui.edits import (
    LAYER_EDITS,
    NEW_LAYER_PROMPT,
    PlanEditError,
    add_layer,
    apply_edit,
    apply_layer_edit,
    clear_layer_mask,
    delete_layer,
    lower_layer,
    plan_view,
    raise_layer,
    set_layer_box,
    set_layer_mask,
    to_canvas,
    to_grid,
)

TWO_ROWS = RegionPlan.from_split_ratio("1,1,1;2,1,3", "a BREAK b BREAK c BREAK d")


def canvas(*boxes: tuple[float, float, float, float], base: str | None = "a sky") -> RegionPlan:
    layers = [{"prompt": f"thing {i + 1}", "box": box} for i, box in enumerate(boxes)]
    return RegionPlan.model_validate({"layers": layers, "base_prompt": base})


def disc_mask(size: tuple[int, int] = (40, 20), ellipse: tuple[int, ...] = (10, 5, 30, 15)) -> Any:
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).ellipse(ellipse, fill=255)
    return LayerMask.from_image(image)


def boxes(plan: RegionPlan) -> list[tuple[float, ...]]:
    return [tuple(layer.box) for layer in plan.layers if layer.box is not None]


def test_drawing_a_box_starts_a_canvas_plan_and_later_boxes_go_on_top() -> None:
    first = add_layer(None, (0.1, 0.2, 0.5, 0.6), base_prompt="a meadow")
    assert first.is_canvas and first.base_prompt == "a meadow"
    assert boxes(first) == [(0.1, 0.2, 0.5, 0.6)]
    assert first.layers[0].prompt == NEW_LAYER_PROMPT
    second = add_layer(first, [0.4, 0.4, 0.9, 0.9], "a red kite")
    assert [layer.prompt for layer in second.layers] == [NEW_LAYER_PROMPT, "a red kite"]
    assert boxes(second)[1] == (0.4, 0.4, 0.9, 0.9)
    assert len(first.layers) == 1  # plans are frozen: the edit made a new one
    assert add_layer(None, (0, 0, 1, 1)).base_prompt is None  # background: the whole prompt


def test_grid_and_layer_edits_refuse_the_other_kind_of_plan() -> None:
    with pytest.raises(PlanEditError, match="grid of rows and regions; convert it to layers"):
        add_layer(TWO_ROWS, (0, 0, 0.5, 0.5))
    with pytest.raises(PlanEditError, match="convert it to layers"):
        raise_layer(TWO_ROWS, 0)
    with pytest.raises(PlanEditError, match="this plan is a canvas of layers; rows and regions"):
        apply_edit(to_canvas(TWO_ROWS), "split_region", 0, 0)


def test_moving_and_resizing_set_the_box_and_bad_boxes_are_refused_in_one_line() -> None:
    plan = canvas((0.1, 0.1, 0.3, 0.3), (0.5, 0.5, 0.9, 0.9))
    moved = set_layer_box(plan, 0, (0.2, 0.25, 0.4, 0.45))
    assert boxes(moved) == [(0.2, 0.25, 0.4, 0.45), (0.5, 0.5, 0.9, 0.9)]
    for bad in [(0.5, 0.5, 0.5, 0.9), (0.2, 0.2, 0.1, 0.4), (-0.1, 0, 0.5, 0.5), (0, 0, 1.2, 1)]:
        with pytest.raises(PlanEditError) as info:
            set_layer_box(plan, 0, bad)
        assert "\n" not in str(info.value) and "pydantic" not in str(info.value)
        assert "box" in str(info.value)
    with pytest.raises(PlanEditError, match="four numbers"):
        set_layer_box(plan, 0, (0.1, 0.2, 0.3))
    with pytest.raises(PlanEditError, match="finite"):
        set_layer_box(plan, 0, (0.1, float("nan"), 0.3, 0.4))
    with pytest.raises(PlanEditError, match="there is no layer 3; the plan has 2 layers"):
        set_layer_box(plan, 2, (0, 0, 1, 1))


def test_layers_reorder_up_and_down_and_delete() -> None:
    plan = canvas((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), (0.5, 0.5, 1, 1))
    up = raise_layer(plan, 0)
    assert [layer.prompt for layer in up.layers] == ["thing 2", "thing 1", "thing 3"]
    down = lower_layer(plan, 2)
    assert [layer.prompt for layer in down.layers] == ["thing 1", "thing 3", "thing 2"]
    assert boxes(down)[1] == (0.5, 0.5, 1, 1)  # the box travels with its layer
    with pytest.raises(PlanEditError, match="layer 3 is already the top layer"):
        raise_layer(plan, 2)
    with pytest.raises(PlanEditError, match="layer 1 is already the bottom layer"):
        lower_layer(plan, 0)
    gone = delete_layer(plan, 1)
    assert [layer.prompt for layer in gone.layers] == ["thing 1", "thing 3"]
    with pytest.raises(PlanEditError, match="at least one layer"):
        delete_layer(canvas((0, 0, 1, 1)), 0)


def test_a_mask_replaces_the_box_and_removing_it_gives_the_box_around_it() -> None:
    plan = canvas((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1))
    mask = disc_mask()
    masked = set_layer_mask(plan, 1, mask)
    assert masked.layers[1].box is None and masked.layers[1].mask == mask
    assert masked.layers[0].box is not None
    with pytest.raises(PlanEditError, match="layer 2 is shaped by a mask image; remove its mask"):
        set_layer_box(masked, 1, (0, 0, 1, 1))
    # The ellipse spans x 10..30 of 40 and y 5..15 of 20 (PIL's box includes the end pixel).
    cleared = clear_layer_mask(masked, 1)
    assert cleared.layers[1].mask is None
    assert cleared.layers[1].box == pytest.approx((0.25, 0.25, 31 / 40, 16 / 20))
    with pytest.raises(PlanEditError, match="layer 1 has no mask"):
        clear_layer_mask(plan, 0)


def test_a_grid_becomes_layers_and_back_to_the_same_grid() -> None:
    layers = to_canvas(TWO_ROWS)
    assert layers.is_canvas and [layer.prompt for layer in layers.layers] == list(TWO_ROWS.prompts)
    for got, want in zip(boxes(layers), TWO_ROWS.boxes(), strict=True):
        assert got == pytest.approx(want)
    assert to_canvas(layers) is layers
    back = to_grid(layers)
    assert back == TWO_ROWS  # small whole-number ratios again: "1,1,1;2,1,3"
    assert back.to_split_ratio() == "1,1,1;2,1,3"
    thirds = RegionPlan.from_split_ratio("1,1,1", "x BREAK y BREAK z")
    assert to_grid(to_canvas(thirds)).to_split_ratio() == "1,1,1"  # not 0.333333,...
    assert to_grid(TWO_ROWS) is TWO_ROWS


def test_region_settings_survive_the_round_trip() -> None:
    data = TWO_ROWS.model_dump()
    data["rows"][1]["regions"][0].update(negative_prompt="blur", base_weight=0.6)
    tuned = RegionPlan.model_validate({**data, "base_prompt": "four things"})
    layer = to_canvas(tuned).layers[2]
    assert (layer.negative_prompt, layer.base_weight) == ("blur", 0.6)
    assert to_grid(to_canvas(tuned)) == tuned


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (canvas((0, 0, 0.6, 1), (0.5, 0, 1, 1)), "row starting 0% down do not fill it"),
        (canvas((0, 0, 0.5, 1)), "do not fill it"),
        (canvas((0, 0, 1, 0.5), (0, 0.6, 1, 1)), "do not stack in rows"),
        (canvas((0, 0, 1, 1), (0.2, 0.2, 0.4, 0.4)), "do not stack in rows"),
    ],
)
def test_layers_that_do_not_tile_stay_layers_with_a_reason(plan: RegionPlan, message: str) -> None:
    with pytest.raises(PlanEditError, match=message):
        to_grid(plan)


def test_a_mask_layer_cannot_become_a_grid_region() -> None:
    masked = set_layer_mask(canvas((0, 0, 1, 1)), 0, disc_mask())
    with pytest.raises(PlanEditError, match="layer 1 is shaped by a mask; only box layers"):
        to_grid(masked)


def test_apply_layer_edit_dispatches_by_name() -> None:
    plan = canvas((0, 0, 0.5, 0.5))
    assert set(LAYER_EDITS) >= {"add_layer", "set_box", "raise_layer", "set_mask", "to_grid"}
    added = apply_layer_edit(plan, "add_layer", box=(0.5, 0.5, 1, 1))
    assert len(added.layers) == 2
    assert boxes(apply_layer_edit(added, "set_box", 1, box=(0, 0.5, 0.5, 1)))[1] == (0, 0.5, 0.5, 1)
    assert apply_layer_edit(plan, "set_mask", 0, mask=disc_mask()).layers[0].mask is not None
    with pytest.raises(PlanEditError, match="unknown edit 'explode'; known: add_layer"):
        apply_layer_edit(plan, "explode")
    with pytest.raises(PlanEditError, match="the set_box edit needs a box"):
        apply_layer_edit(plan, "set_box", 0)
    with pytest.raises(PlanEditError, match="the set_mask edit needs a mask"):
        apply_layer_edit(plan, "set_mask", 0)


def test_plan_view_of_a_canvas_lists_layers_bottom_to_top() -> None:
    plan = set_layer_mask(canvas((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)), 1, disc_mask())
    view = plan_view(plan)
    assert view["kind"] == "canvas" and view["regions"] == [] and view["split_ratio"] == ""
    assert view["prompts"] == "thing 1 BREAK thing 2" and view["base_prompt"] == "a sky"
    first, second = view["layers"]
    assert (first["index"], first["mask"], first["box"]) == (0, False, (0, 0, 0.5, 0.5))
    assert second["mask"] is True and second["box"] == pytest.approx(disc_mask().bounding_box())
    assert view["plan"]["layers"][1]["mask"]["png"] == disc_mask().png
    grid = plan_view(TWO_ROWS)
    assert grid["kind"] == "grid" and grid["layers"] == [] and len(grid["regions"]) == 4


def test_a_mask_png_is_not_held_to_the_prompt_length_limit() -> None:
    noisy = Image.effect_noise((160, 160), 80).convert("L")
    mask = LayerMask.from_image(noisy)
    assert len(mask.png) > MAX_TEXT_CHARS  # a detailed mask is longer than any prompt may be
    body = {"plan": set_layer_mask(canvas((0, 0, 1, 1)), 0, mask).model_dump(mode="json")}
    check_text_sizes(body)  # no error: the plan model bounds masks by the plan's size
    body["plan"]["layers"][0]["prompt"] = "p" * (MAX_TEXT_CHARS + 1)
    with pytest.raises(TextTooLong, match=r"plan\.layers\.0\.prompt is"):
        check_text_sizes(body)
    long = "x" * (MAX_TEXT_CHARS + 1)
    for elsewhere in ({"png": long}, {"nomask": {"png": long}}, {"mask": {"pngs": long}}):
        with pytest.raises(TextTooLong):
            check_text_sizes({"request": elsewhere})


def test_the_view_warns_about_layers_that_paint_nothing_at_the_size() -> None:
    plan = canvas((0, 0, 1, 1), (0.5, 0.5, 0.52, 0.52), (0, 0, 1, 1))
    view = plan_view(plan, (64, 64), 8)
    assert len(view["warnings"]) == 2, view["warnings"]
    first, second = view["warnings"]
    assert first.startswith("layer 1 of 3 ('thing 1') paints nothing on a 64x64 image")
    assert "the layers above it cover it completely" in first
    assert second.startswith("layer 2 of 3")
    uncovered = delete_layer(plan, 2)
    (small,) = plan_view(uncovered, (64, 64), 8)["warnings"]
    assert "smaller than one 8x8-pixel cell" in small
    assert plan_view(uncovered, (4096, 4096), 8)["warnings"] == []  # 0.02 of 512 cells: 10
    assert plan_view(uncovered)["warnings"] == []  # no size, no judgement
    assert plan_view(TWO_ROWS, (64, 64))["warnings"] == []
