"""Canvas plans through every backbone: a grid and its ``to_canvas()`` render the same pixels,
and a canvas with background, overlaps and a soft mask renders (its background text packed).

One module for all six families so each tiny model is written and loaded once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rpg.backbones.tiny.controlnet import write_tiny_controlnet
from rpg.models import GenerationRequest, Layer, LayerMask, LayerWarning, RegionPlan
from rpg.orchestrator import RPG
from tiny_helpers import torch_threads, write_tiny_models

PROMPT = "a red cat on the left, a blue dog on the right, a sun above"
GRID = RegionPlan.from_split_ratio(
    "1,1,2;2,1,1,1",
    ["a bright sun", "a cloud", "a red cat", "a blue dog", "green grass"],
    base_prompt="a sunny meadow",
    base_ratio=0.3,
)
FAMILIES = ["tiny-sd", "tiny-sdxl", "tiny-controlnet", "tiny-flux", "tiny-sd3", "tiny-flux2-klein"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rpg-canvas-models")
    names = ["tiny-sd", "tiny-sdxl", "tiny-flux", "tiny-sd3", "tiny-flux2-klein"]
    folders = write_tiny_models(root, names)
    folders["cn"] = write_tiny_controlnet(root / "cn", sdxl=False, seed=0)
    return folders


def _load(models: dict[str, Path], family: str) -> RPG:
    if family == "tiny-controlnet":
        pipe = RPG.from_pretrained(
            models["tiny-sd"], device="cpu", dtype="float32", controlnet=models["cn"]
        )
    else:
        pipe = RPG.from_pretrained(models[family], device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _extra(family: str) -> dict[str, Any]:
    if family != "tiny-controlnet":
        return {}
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((12, 20, 50, 44), outline=(255, 255, 255), width=2)
    return {"image": image}


def _render(pipe: RPG, family: str, plan: RegionPlan, **fields: Any) -> np.ndarray:
    size = 64 if family in ("tiny-sd", "tiny-sdxl", "tiny-controlnet") else 96
    request = GenerationRequest(
        prompt=PROMPT, plan=plan, steps=2, seed=11, width=size, height=size, **fields
    )
    return np.asarray(pipe.generate(request, output_type="np", **_extra(family)).images[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_grid_and_its_canvas_render_the_same_pixels(models: dict[str, Path], family: str) -> None:
    pipe = _load(models, family)
    canvas = GRID.to_canvas()
    grid_pixels = _render(pipe, family, GRID)
    canvas_pixels = _render(pipe, family, canvas)
    np.testing.assert_array_equal(canvas_pixels, grid_pixels)

    # a real canvas (background, overlap, soft mask, no base prompt) renders and differs
    mask = np.zeros((32, 32))
    mask[4:20, 8:30] = 1.0
    free = RegionPlan(
        layers=[
            Layer(prompt="a red cat", box=(0.1, 0.4, 0.6, 0.95)),
            Layer(prompt="a blue dog", box=(0.4, 0.5, 0.9, 1.0)),
            Layer(prompt="a bright sun", mask=LayerMask.from_image(mask, soft_edge=0.05)),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerWarning)  # every layer paints something
        free_pixels = _render(pipe, family, free)
    assert np.isfinite(free_pixels).all()
    assert np.abs(free_pixels - grid_pixels).max() > 1e-3
