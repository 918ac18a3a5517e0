"""Canvas plans: layers with boxes and masks, their validation, geometry and composited weights."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from rpg.layout import grid_cells
from rpg.models import MAX_LAYERS, Layer, LayerMask, LayerWarning, Region, RegionPlan, Row


def _mask(array: np.ndarray, soft_edge: float = 0.0) -> LayerMask:
    return LayerMask.from_image(array, soft_edge=soft_edge)


def test_a_canvas_plan_round_trips_through_json_with_its_masks() -> None:
    m = np.zeros((20, 30), dtype=bool)
    m[5:15, 10:25] = True
    plan = RegionPlan(
        layers=[
            Layer(prompt="a blue sky", box=(0, 0, 1, 0.5)),
            Layer(prompt="a bird", mask=_mask(m, 0.02), negative_prompt="blurry", base_weight=0.1),
        ],
        base_prompt="a landscape",
    )
    again = RegionPlan.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert again.is_canvas and not RegionPlan.single("x").is_canvas
    assert again.prompts == ["a blue sky", "a bird"]
    assert again.base_weights() == [0.3, 0.1]
    assert again.boxes() == [(0, 0, 1, 0.5), pytest.approx((10 / 30, 5 / 20, 25 / 30, 15 / 20))]
    assert [r.negative_prompt for r in again.regions] == [None, "blurry"]


def test_mask_keeps_its_content_and_checks_its_hash() -> None:
    mask = _mask(np.eye(8, dtype=bool))
    data = base64.b64decode(mask.png)
    assert mask.sha256 == hashlib.sha256(data).hexdigest()
    assert Image.open(io.BytesIO(data)).mode == "L"
    with pytest.raises(ValidationError, match="does not match its PNG bytes"):
        LayerMask(png=mask.png, sha256="0" * 64)
    with pytest.raises(ValidationError, match="not valid base64"):
        LayerMask(png="!!not base64!!", sha256="0" * 64)
    with pytest.raises(ValidationError, match="is empty"):
        _mask(np.zeros((4, 4)))
    buf = io.BytesIO()
    Image.new("L", (4, 4), 255).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    with pytest.raises(ValidationError, match="must be a PNG"):
        LayerMask(png=base64.b64encode(jpeg).decode(), sha256=hashlib.sha256(jpeg).hexdigest())
    with pytest.raises(ValueError, match="2-D"):
        LayerMask.from_image(np.ones((2, 2, 3)))


def test_mask_coverage_is_the_area_average() -> None:
    m = np.zeros((4, 6))
    m[:, :3] = 1.0  # left half
    m[0, 3] = 0.5
    cover = _mask(m).coverage(2, 3)
    # cell (0, 1) averages rows 0-1, columns 2-3: two 1s, one 128/255 and one 0
    assert cover[:, 0].tolist() == [1.0, 1.0]
    assert cover[0, 1] == pytest.approx((2 + 128 / 255) / 4)
    assert cover[1, 1] == pytest.approx(0.5)
    assert cover[:, 2].tolist() == [0.0, 0.0]
    # same grid as the picture: exact
    assert _mask(m).coverage(4, 6)[:, :3].min() == 1.0


def test_soft_edge_feathers_edges_but_keeps_the_inside() -> None:
    m = np.zeros((64, 64), dtype=bool)
    m[:, :32] = True
    hard, soft = _mask(m).coverage(16, 16), _mask(m, 0.05).coverage(16, 16)
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert soft[:, 0].min() == 1.0 and soft[:, -1].max() == 0.0
    assert 0 < soft[0, 8] < 1 and 0 < soft[0, 7] < 1
    assert np.all(np.diff(soft[0]) <= 0)  # monotone across the edge


def test_layer_needs_exactly_one_valid_shape() -> None:
    m = _mask(np.ones((2, 2)))
    with pytest.raises(ValidationError, match="exactly one shape"):
        Layer(prompt="a")
    with pytest.raises(ValidationError, match=r"exactly one shape.*both"):
        Layer(prompt="a", box=(0, 0, 1, 1), mask=m)
    with pytest.raises(ValidationError, match="inside the canvas"):
        Layer(prompt="a", box=(0, 0, 1.5, 1))
    with pytest.raises(ValidationError, match="no area"):
        Layer(prompt="a", box=(0.5, 0, 0.5, 1))
    with pytest.raises(ValidationError, match="no area"):
        Layer(prompt="a", box=(0.5, 0.5, 0.2, 0.2))
    with pytest.raises(ValidationError, match="must not be empty"):
        Layer(prompt="  ", box=(0, 0, 1, 1))


def test_plan_is_one_kind_and_has_a_layer_limit() -> None:
    grid = RegionPlan.single("a")
    layer = Layer(prompt="b", box=(0, 0, 1, 1))
    with pytest.raises(ValidationError, match=r"needs rows .* or layers"):
        RegionPlan()
    with pytest.raises(ValidationError, match="not both"):
        RegionPlan(rows=grid.rows, layers=[layer])
    with pytest.raises(ValidationError, match=f"at most {MAX_LAYERS} layers"):
        RegionPlan(layers=[layer] * (MAX_LAYERS + 1))
    canvas = RegionPlan(layers=[layer])
    with pytest.raises(ValueError, match="canvas plan"):
        canvas.to_split_ratio()


def test_json_schema_covers_both_kinds() -> None:
    schema = RegionPlan.model_json_schema()
    assert {"rows", "layers"} <= set(schema["properties"])
    defs = schema["$defs"]
    assert {"Layer", "LayerMask", "Row", "Region"} <= set(defs)
    assert "box" in defs["Layer"]["properties"] and "mask" in defs["Layer"]["properties"]
    json.dumps(schema)


_grid_rows = st.lists(
    st.tuples(
        st.integers(1, 5), st.lists(st.integers(1, 5).map(float), min_size=1, max_size=4)
    ).map(lambda t: (float(t[0]), t[1])),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(rows=_grid_rows, h=st.integers(1, 24), w=st.integers(1, 24))
def test_to_canvas_lands_on_the_grid_cells_at_every_size(rows, h: int, w: int) -> None:
    count = iter(range(100))
    grid = RegionPlan(
        rows=[
            Row(
                height=rh,
                regions=[
                    Region(prompt=f"p{i}", width=x, base_weight=0.5 if i % 2 else None)
                    for x in ws
                    for i in [next(count)]
                ],
            )
            for rh, ws in rows
        ],
        base_prompt="base",
    )
    canvas = grid.to_canvas()
    assert canvas.prompts == grid.prompts and canvas.base_weights() == grid.base_weights()
    assert canvas.boxes() == grid.boxes()
    weights, background = canvas.layer_weights(h, w)
    assert not background.any()
    expected = np.zeros_like(weights)
    for r, (y0, y1, x0, x1) in enumerate(grid_cells(grid.split_rows(), h, w)):
        expected[r, y0:y1, x0:x1] = 1.0
    np.testing.assert_array_equal(weights, expected)
    np.testing.assert_array_equal(grid.layer_weights(h, w)[0], expected)


def test_layers_composite_like_an_image_editor() -> None:
    half = np.zeros((4, 4))
    half[:, 2:] = 0.5
    plan = RegionPlan(
        layers=[
            Layer(prompt="bottom", box=(0, 0, 1, 0.5)),
            Layer(prompt="top", mask=_mask(half)),
        ]
    )
    weights, bg = plan.layer_weights(4, 4)
    top = 128 / 255
    np.testing.assert_allclose(weights[1][:, 2:], top)
    np.testing.assert_allclose(weights[0][:2, 2:], 1 - top)
    np.testing.assert_array_equal(weights[0][:2, :2], 1.0)
    np.testing.assert_allclose(bg[2:, 2:], 1 - top)
    np.testing.assert_array_equal(bg[2:, :2], 1.0)
    np.testing.assert_allclose(weights.sum(0) + bg, 1.0)


def test_a_layer_that_paints_nothing_is_a_warning() -> None:
    plan = RegionPlan(
        layers=[
            Layer(prompt="hidden", box=(0.2, 0.2, 0.4, 0.4)),
            Layer(prompt="tiny", box=(0.5, 0.5, 0.51, 0.51)),
            Layer(prompt="cover", box=(0, 0, 0.5, 0.5)),
        ]
    )
    with pytest.warns(LayerWarning) as caught:
        assert plan.warn_unpainted(64, 64) == [0, 1]
    messages = [str(w.message) for w in caught]
    assert "cover it completely" in messages[0] and "'hidden'" in messages[0]
    assert "smaller than one 8x8-pixel cell" in messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            RegionPlan(layers=[Layer(prompt="x", box=(0.5, 0.5, 0.6, 0.6))]).warn_unpainted(64, 64)
            == []
        )


def test_load_reads_a_canvas_plan_or_a_plan_result(tmp_path) -> None:
    plan = RegionPlan(layers=[Layer(prompt="a cat", box=(0.1, 0.2, 0.6, 0.9))], base_prompt="sofa")
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    assert RegionPlan.load(tmp_path / "plan.json") == plan
    wrapped = {"plan": json.loads(plan.model_dump_json()), "raw": ""}
    (tmp_path / "result.json").write_text(json.dumps(wrapped))
    assert RegionPlan.load(tmp_path / "result.json") == plan
