"""Canvas plans on the command line and in files: colour-coded mask pictures, ``rpg plan``,
``rpg layout``, ``rpg generate --plan/--mask-image`` and ``--from`` re-rendering a canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rpg.canvas_image import plan_from_mask_image
from rpg.cli import main
from rpg.metadata import load_request, read_metadata
from rpg.models import Layer, LayerMask, PlanResult, RegionPlan

PROMPT = "a cat on a sofa under a lamp"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def regions_png(path: Path) -> Path:
    """Black background; green first seen in row 2, red in row 5 (though red is left of it
    further down), blue last."""
    image = Image.new("RGB", (40, 40), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 2, 30, 10), fill=(0, 200, 0))
    draw.rectangle((2, 5, 15, 30), fill=(255, 0, 0))
    draw.ellipse((18, 25, 38, 38), fill=(0, 0, 255))
    image.save(path)
    return path


def canvas_plan() -> RegionPlan:
    mask = np.zeros((16, 16))
    mask[1:6, 9:15] = 1.0
    return RegionPlan(
        layers=[
            Layer(prompt="a red sofa", box=(0.0, 0.5, 1.0, 1.0)),
            Layer(prompt="a grey cat", box=(0.25, 0.3, 0.625, 0.8), base_weight=0.2),
            Layer(prompt="a warm lamp", mask=LayerMask.from_image(mask, soft_edge=0.05)),
        ],
        base_prompt="a cosy living room",
        base_ratio=0.3,
    )


def test_mask_image_layers_follow_first_appearance(tmp_path: Path) -> None:
    plan = plan_from_mask_image(regions_png(tmp_path / "r.png"), "green BREAK red BREAK blue")
    assert plan.prompts == ["green", "red", "blue"] and plan.base_prompt is None
    weights, background = plan.layer_weights(40, 40)
    assert weights[0][2:11, 20:31].min() == 1.0 and weights[0].sum() == 9 * 11
    assert weights[1][5:31, 2:16].min() == 1.0
    assert background[0, 0] == 1.0 and background[35, 2] == 1.0
    assert not (weights.sum(0) * background).any()  # colours and black never share a pixel


def test_mask_image_errors_are_clear(tmp_path: Path) -> None:
    path = regions_png(tmp_path / "r.png")
    with pytest.raises(ValueError, match=r"3 colours besides black \(#00c800.*but 2 prompts"):
        plan_from_mask_image(path, "a BREAK b")
    Image.new("RGB", (8, 8)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match="all black"):
        plan_from_mask_image(tmp_path / "black.png", "a")
    with pytest.raises(FileNotFoundError, match="mask image not found"):
        plan_from_mask_image(tmp_path / "missing.png", "a")
    with pytest.raises(ValueError, match="prompt 2 of 3 is empty"):
        plan_from_mask_image(path, "a BREAK  BREAK c")


def test_rpg_plan_prints_and_writes_a_canvas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = regions_png(tmp_path / "r.png")
    args = ["plan", "--mask-image", str(path), "--prompts", "a lamp BREAK a cat BREAK a ball"]
    assert main([*args, "--base-prompt", "a room"]) == 0
    table = capsys.readouterr().out
    assert "canvas:      3 layers, bottom to top" in table
    assert "a room (ratio 0.3; background)" in table
    assert " 2  mask       0.05,0.12 - 0.40,0.78  a cat" in table
    assert main([*args, "--json"]) == 0
    result = PlanResult.model_validate_json(capsys.readouterr().out)
    assert result.plan.is_canvas and result.plan.prompts == ["a lamp", "a cat", "a ball"]
    # errors name the flags
    assert main(["plan", "--mask-image", str(path)]) != 0
    assert "--mask-image needs --prompts" in capsys.readouterr().err
    assert main([*args[:3], "--prompts", "one BREAK two"]) != 0
    assert "3 colours besides black" in capsys.readouterr().err
    assert main([*args, "--split-ratio", "1,1"]) != 0
    assert "not both" in capsys.readouterr().err


def test_rpg_plan_shows_a_canvas_plan_file_and_layout_draws_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = canvas_plan()
    plan_file = tmp_path / "canvas.json"
    plan_file.write_text(plan.model_dump_json(), encoding="utf-8")
    out = tmp_path / "layout.png"
    assert main(["layout", str(plan_file), "--out", str(out), "--size", "320x320"]) == 0
    assert "(3 layers)" in capsys.readouterr().out
    image = pixels(out)
    assert image.shape[1] == 320 and image.shape[0] > 320  # the caption strip below
    background, sofa, lamp = image[20, 20], image[300, 20], image[40, 240]
    assert tuple(background) == (236, 236, 236)
    assert not np.array_equal(sofa, background) and not np.array_equal(lamp, background)
    assert not np.array_equal(sofa, lamp)


def test_generate_renders_a_canvas_plan_and_from_rerenders_it(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = canvas_plan()
    plan_file = tmp_path / "canvas.json"
    plan_file.write_text(plan.model_dump_json(), encoding="utf-8")
    x, y = tmp_path / "x.png", tmp_path / "y.png"
    common = ["--size", "64x64", "--steps", "2", "--seed", "4"]
    assert main(["generate", PROMPT, "--plan", str(plan_file), *common, "--out", str(x)]) == 0
    assert "3 layers (canvas)" in capsys.readouterr().out
    data = read_metadata(x)
    assert RegionPlan.model_validate(data["plan"]) == plan  # masks embedded by content
    assert data["plan"]["layers"][2]["mask"]["sha256"] == plan.layers[2].mask.sha256  # type: ignore[union-attr]
    assert load_request(x).plan == plan

    assert main(["generate", "--from", str(x), "--out", str(y)]) == 0
    assert np.array_equal(pixels(x), pixels(y))

    # a changed layer changes the pixels: the canvas is what was rendered
    moved = plan.model_copy(update={"layers": (*plan.layers[:2],)})
    plan_file.write_text(moved.model_dump_json(), encoding="utf-8")
    z = tmp_path / "z.png"
    assert main(["generate", PROMPT, "--plan", str(plan_file), *common, "--out", str(z)]) == 0
    assert not np.array_equal(pixels(x), pixels(z))


def test_generate_with_a_mask_image(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = regions_png(tmp_path / "r.png")
    out = tmp_path / "m.png"
    args = ["generate", PROMPT, "--mask-image", str(path), "--size", "64x64", "--steps", "2"]
    assert main([*args, "--prompts", "a lamp BREAK a cat BREAK a ball", "--out", str(out)]) == 0
    request = load_request(out)
    assert request.plan is not None and request.plan.prompts == ["a lamp", "a cat", "a ball"]
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) != 0
    assert "--mask-image needs --prompts" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--prompts", "a BREAK b", "--out", str(out)]) != 0
    assert "--prompts goes with --mask-image" in capsys.readouterr().err


def test_a_large_mask_picture_is_reduced_by_area(tmp_path: Path) -> None:
    image = Image.new("RGB", (2000, 1000), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 1001, 999), fill=(255, 0, 0))  # left half + 2 px
    plan = plan_from_mask_image(image, "left", max_side=500)
    mask = plan.layers[0].mask
    assert mask is not None and mask.size == (500, 250)
    cover = mask.coverage(1, 2)  # area average of the reduced mask = the picture's own
    assert cover[0, 0] == 1.0 and cover[0, 1] == pytest.approx(2 / 1000, abs=1 / 255)
    assert len(plan.model_dump_json()) < 10_000
