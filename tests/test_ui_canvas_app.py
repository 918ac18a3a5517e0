"""The rpg ui app's canvas mode over HTTP: layer edits, mask uploads, and their error paths."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("starlette", reason="the 'ui' extra (starlette) is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")

from starlette.testclient import TestClient

from rpg.models import LayerMask, RegionPlan
from rpg.ui import build_app
from rpg.ui.app import MAX_MASK_SIDE
from rpg.ui.bodies import MAX_MASK_UPLOAD_BYTES
from ui_helpers import wait

LOCAL = "http://localhost"
PNG = {"content-type": "image/png", "x-filename": "mask.png"}


@pytest.fixture
def client(tiny_rpg: Any, tmp_path: Path) -> TestClient:
    return TestClient(
        build_app(tiny_rpg, output_dir=tmp_path / "out", planner="rules"), base_url=LOCAL
    )


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_pixels(mask: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(mask["png"])))


def layer_edit(client: TestClient, **body: Any) -> Any:
    return client.post("/api/plan/layer", json=body)


def test_drawing_moving_and_reordering_boxes_through_the_api(client: TestClient) -> None:
    first = layer_edit(client, edit="add_layer", box=[0.1, 0.1, 0.4, 0.5], base_prompt="a lawn")
    assert first.status_code == 200, first.json()
    view = first.json()
    assert view["kind"] == "canvas" and view["base_prompt"] == "a lawn"
    assert [layer["box"] for layer in view["layers"]] == [[0.1, 0.1, 0.4, 0.5]]
    second = layer_edit(client, plan=view["plan"], edit="add_layer", box=[0.5, 0.5, 0.9, 0.9])
    view = second.json()
    moved = layer_edit(client, plan=view["plan"], edit="set_box", layer=0, box=[0.2, 0, 0.5, 0.4])
    view = moved.json()
    assert view["plan"]["layers"][0]["box"] == [0.2, 0, 0.5, 0.4]
    raised = layer_edit(client, plan=view["plan"], edit="raise_layer", layer=0).json()
    assert [layer["box"] for layer in raised["layers"]] == [
        [0.5, 0.5, 0.9, 0.9],
        [0.2, 0, 0.5, 0.4],
    ]
    # The plan the page holds validates as a canvas plan on its own, e.g. after a prompt edit.
    plan = raised["plan"]
    plan["layers"][1]["prompt"] = "a garden gnome"
    checked = client.post("/api/plan/check", json={"plan": plan}).json()
    assert checked["layers"][1]["prompt"] == "a garden gnome"


def test_a_grid_converts_to_layers_and_back(client: TestClient) -> None:
    plan = RegionPlan.from_split_ratio("1,1,1;1,1", ["a cat", "a dog", "grass"])
    grid = plan.model_dump(mode="json")
    view = layer_edit(client, plan=grid, edit="to_canvas").json()
    assert view["kind"] == "canvas" and [layer["prompt"] for layer in view["layers"]] == [
        "a cat",
        "a dog",
        "grass",
    ]
    back = layer_edit(client, plan=view["plan"], edit="to_grid").json()
    assert back["kind"] == "grid" and back["plan"] == grid
    moved = layer_edit(client, plan=view["plan"], edit="set_box", layer=0, box=[0, 0, 0.4, 0.5])
    refused = layer_edit(client, plan=moved.json()["plan"], edit="to_grid")
    assert refused.status_code == 422 and refused.json()["field"] == "layer"
    assert "only layers that tile the canvas become a grid" in refused.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"edit": "set_box", "box": [0, 0, 1, 1]}, "no plan yet"),
        ({"edit": "add_layer", "box": [0.5, 0.5, 0.2, 0.9]}, "has no area"),
        ({"edit": "add_layer", "box": [0, 0, 1.5, 1]}, "must lie inside the canvas"),
        ({"edit": "add_layer", "box": [0, 0, 1]}, "box"),
        ({"edit": "add_layer", "box": [0, 0, 1, 1], "layer": -1}, "layer"),
        ({"edit": "add_layer", "box": [0, 0, 1, 1], "extra": 1}, "extra"),
    ],
)
def test_bad_layer_edits_are_422_with_a_reason(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    answer = layer_edit(client, **body)
    assert answer.status_code == 422 and message in answer.json()["error"], answer.json()
    assert "Traceback" not in answer.json()["error"]


def test_layer_edits_on_a_plan_name_the_layer(client: TestClient) -> None:
    plan = layer_edit(client, edit="add_layer", box=[0, 0, 1, 1]).json()["plan"]
    for body, message in [
        ({"edit": "delete_layer"}, "at least one layer"),
        ({"edit": "raise_layer", "layer": 4}, "there is no layer 5"),
        ({"edit": "set_mask"}, "needs a mask"),
        ({"edit": "shuffle"}, "unknown edit 'shuffle'"),
    ]:
        answer = layer_edit(client, plan=plan, **body)
        assert answer.status_code == 422 and message in answer.json()["error"], answer.json()


def test_a_mask_image_becomes_a_layer_mask_and_shapes_the_layer(client: TestClient) -> None:
    image = Image.new("RGB", (64, 48), "black")
    ImageDraw.Draw(image).rectangle((16, 12, 47, 35), fill="white")
    answer = client.post("/api/mask", content=png(image), headers=PNG)
    assert answer.status_code == 200, answer.json()
    mask = answer.json()["mask"]
    LayerMask.model_validate(mask)  # the plan model's own checks (sha256, non-empty) pass
    assert mask_pixels(mask).mode == "L" and mask_pixels(mask).size == (64, 48)
    plan = layer_edit(client, edit="add_layer", box=[0, 0, 0.5, 0.5]).json()["plan"]
    view = layer_edit(client, plan=plan, edit="set_mask", layer=0, mask=mask).json()
    assert view["layers"][0]["mask"] is True
    assert view["layers"][0]["box"] == pytest.approx([0.25, 0.25, 0.75, 0.75])
    assert view["plan"]["layers"][0]["box"] is None
    cleared = layer_edit(client, plan=view["plan"], edit="clear_mask", layer=0).json()
    assert cleared["plan"]["layers"][0]["mask"] is None
    assert cleared["plan"]["layers"][0]["box"] == pytest.approx([0.25, 0.25, 0.75, 0.75])


def test_a_transparent_background_paints_nothing_and_large_masks_are_shrunk(
    client: TestClient,
) -> None:
    # White everywhere, but only the left half is opaque: the layer is the left half.
    image = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 19, 39), fill=(255, 255, 255, 255))
    mask = client.post("/api/mask", content=png(image), headers=PNG).json()["mask"]
    assert LayerMask.model_validate(mask).bounding_box() == (0.0, 0.0, 0.5, 1.0)
    big = Image.new("L", (2 * MAX_MASK_SIDE, MAX_MASK_SIDE), 0)
    ImageDraw.Draw(big).rectangle((0, 0, MAX_MASK_SIDE - 1, MAX_MASK_SIDE - 1), fill=255)
    shrunk = client.post("/api/mask", content=png(big), headers=PNG).json()["mask"]
    assert mask_pixels(shrunk).size == (MAX_MASK_SIDE, MAX_MASK_SIDE // 2)
    assert LayerMask.model_validate(shrunk).bounding_box() == (0.0, 0.0, 0.5, 1.0)


def test_bad_mask_uploads_say_what_to_do(client: TestClient) -> None:
    junk = client.post("/api/mask", content=b"not a png", headers=PNG)
    assert junk.status_code == 422 and "mask.png is not a readable image" in junk.json()["error"]
    assert "white parts are the layer" in junk.json()["error"]
    black = client.post("/api/mask", content=png(Image.new("L", (8, 8), 0)), headers=PNG)
    assert black.status_code == 422 and "the mask is empty" in black.json()["error"]
    empty = client.post("/api/mask", content=b"", headers=PNG)
    assert empty.status_code == 422 and "empty" in empty.json()["error"]
    as_json = client.post("/api/mask", json={"png": "x"})
    assert as_json.status_code == 415
    too_big = client.post("/api/mask", content=b"\0" * (MAX_MASK_UPLOAD_BYTES + 1), headers=PNG)
    assert too_big.status_code == 413 and "most a mask image may have" in too_big.json()["error"]


def test_mask_uploads_keep_the_origin_guard(client: TestClient) -> None:
    image = Image.new("L", (8, 8), 255)
    evil = client.post(
        "/api/mask", content=png(image), headers={**PNG, "origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    foreign = TestClient(client.app, base_url="http://evil.example")
    assert foreign.post("/api/mask", content=png(image), headers=PNG).status_code == 403
    assert foreign.post("/api/plan/layer", json={"edit": "to_grid"}).status_code == 403


def test_checks_warn_about_layers_that_paint_nothing_at_the_render_size(
    client: TestClient,
) -> None:
    view = layer_edit(client, edit="add_layer", box=[0, 0, 1, 1]).json()
    small = layer_edit(client, plan=view["plan"], edit="add_layer", box=[0.5, 0.5, 0.52, 0.52])
    # tiny-sd renders 64x64 by default: an 8x8 latent, where this layer is under one cell.
    (warning,) = small.json()["warnings"]
    assert "layer 2 of 2" in warning and "smaller than one 8x8-pixel cell" in warning
    plan = small.json()["plan"]
    large = client.post("/api/plan/check", json={"plan": plan, "width": 2048, "height": 2048})
    assert large.json()["warnings"] == []
    bad = client.post("/api/plan/check", json={"plan": plan, "width": 4})
    assert bad.status_code == 422 and "width" in bad.json()["error"]


def test_a_detailed_mask_is_shrunk_until_eight_of_them_fit_a_plan(client: TestClient) -> None:
    from rpg.ui.app import MAX_MASK_CHARS, MIN_MASK_SIDE

    # Noise compresses badly: at 512 px it is hundreds of KiB.
    rng = random.Random(0)
    pixels = bytes(rng.randrange(256) for _ in range(MAX_MASK_SIDE * MAX_MASK_SIDE))
    noisy = Image.frombytes("L", (MAX_MASK_SIDE, MAX_MASK_SIDE), pixels)
    answer = client.post("/api/mask", content=png(noisy), headers=PNG)
    assert answer.status_code == 200, answer.json()
    mask = answer.json()["mask"]
    assert len(mask["png"]) <= MAX_MASK_CHARS
    side = mask_pixels(mask).size[0]
    assert MIN_MASK_SIDE <= side < MAX_MASK_SIDE
    # Eight of them still fit in one plan.
    plan = layer_edit(client, edit="add_layer", box=[0, 0, 1, 1]).json()["plan"]
    for _ in range(7):
        plan = layer_edit(client, plan=plan, edit="add_layer", box=[0, 0, 1, 1]).json()["plan"]
    for i in range(8):
        answer = layer_edit(client, plan=plan, edit="set_mask", layer=i, mask=mask)
        assert answer.status_code == 200, answer.json()
        plan = answer.json()["plan"]


def test_a_canvas_plan_renders_and_its_png_reopens_with_the_same_layers(
    client: TestClient,
) -> None:
    disc = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(disc).ellipse((4, 12, 20, 28), fill=255)
    mask = client.post("/api/mask", content=png(disc), headers=PNG).json()["mask"]
    plan = layer_edit(client, edit="add_layer", box=[0.5, 0, 1, 0.5], base_prompt="a sky").json()
    plan = layer_edit(client, plan=plan["plan"], edit="add_layer", box=[0, 0, 0.6, 0.6]).json()
    plan = layer_edit(client, plan=plan["plan"], edit="set_mask", layer=1, mask=mask).json()
    request = {"prompt": "a sun and a cloud in a sky", "steps": 2, "seed": 4, "planner": "rules"}
    body = {"request": request, "plan": plan["plan"]}
    job = wait(client, client.post("/api/generate", json=body).json())
    assert job["state"] == "done", job
    assert job["view"]["kind"] == "canvas"
    image = client.get(job["images"][0]["url"])
    reopened = client.post("/api/reopen", content=image.content, headers=PNG).json()
    assert reopened["view"]["kind"] == "canvas"
    assert reopened["view"]["plan"] == plan["plan"]
    assert reopened["view"]["layers"] == plan["layers"]
