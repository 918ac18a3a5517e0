"""Hires fix: render, upscale the picture, refine it with img2img and the same plan at the larger
grid; recorded in the request and the PNG so ``--from`` re-renders it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cli_helpers import generate_refusal
from rpg.attention.spec import RegionalLayout
from rpg.backbones.base import Backbone
from rpg.batch import expand_requests, read_manifest, run_batch
from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.metadata import load_request
from rpg.models import GenerationRequest, HiresFix, RegionPlan
from rpg.orchestrator import RPG
from tiny_helpers import torch_threads, write_tiny_models

PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> RPG:
    root = tmp_path_factory.mktemp("rpg-hires")
    folder = write_tiny_models(root, ("tiny-flux",))["tiny-flux"]
    pipe = RPG.from_pretrained(folder, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipe(request: pytest.FixtureRequest, family: str) -> RPG:
    pipe: RPG = request.getfixturevalue("tiny_rpg" if family == "sd" else "flux")
    return pipe


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_hires_is_render_then_upscale_then_img2img_at_the_larger_size(
    request: pytest.FixtureRequest, family: str
) -> None:
    pipe = _pipe(request, family)
    base = GenerationRequest(prompt="pets", plan=PLAN, steps=3, seed=2, width=64, height=64)
    hires = HiresFix(scale=1.5, strength=0.6, steps=4)
    result = pipe.generate(base.model_copy(update={"hires": hires}))
    assert result.images[0].size == (96, 96)
    assert result.request.hires == hires and result.request.width == 64

    first = pipe.generate(base).images[0]
    upscaled = first.resize((96, 96), Image.Resampling.LANCZOS)
    refine = base.model_copy(update={"width": 96, "height": 96, "steps": 4, "strength": 0.6})
    by_hand = pipe.generate(refine, init_image=upscaled).images[0]
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(by_hand))
    # the refining pass changed the upscaled picture
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(upscaled))


def test_the_layout_is_recomputed_at_the_larger_grid(
    tiny_rpg: RPG, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int, int]] = []
    real = Backbone.layout

    def spy(self: Backbone, plan: RegionPlan, width: int, height: int) -> RegionalLayout:
        layout = real(self, plan, width, height)
        seen.append((width, height, self.img2img, len(plan.regions)))
        return layout

    monkeypatch.setattr(Backbone, "layout", spy)
    request = GenerationRequest(
        prompt="pets", plan=PLAN, steps=2, seed=1, width=64, height=64, hires={"scale": 2}
    )
    tiny_rpg.generate(request)
    assert seen == [(64, 64, False, 2), (128, 128, True, 2)]


@pytest.mark.parametrize(
    ("family", "scale", "size"), [("sd", 1.3, (80, 80)), ("flux", 1.3, (80, 80))]
)
def test_sizes_round_to_the_models_step_with_a_note(
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    family: str,
    scale: float,
    size: tuple[int, int],
) -> None:
    pipe = _pipe(request, family)
    req = GenerationRequest(
        prompt="pets", plan=PLAN, steps=2, seed=1, width=64, height=64, hires=scale
    )
    with caplog.at_level(logging.WARNING, logger="rpg.hires"):
        result = pipe.generate(req)
    assert result.images[0].size == size
    step = pipe.backbone.latent_factor
    assert f"64x64 x 1.3 is 83.2x83.2; rendering 80x80 (sizes are multiples of {step}" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("fields", "error", "why"),
    [
        ({"hires": {"scale": 0.5}}, ValueError, "greater than 1"),
        ({"hires": {"scale": 2, "strength": 0}}, ValueError, "greater than 0"),
        ({"hires": {"scale": 2, "strength": 0.2}, "steps": 3}, ConfigurationError,
         r"hires strength 0.2 with 3 steps runs no denoising step.*at least 5"),
        ({"hires": 4, "width": 4096, "height": 2048}, ConfigurationError,
         "larger than rpg renders"),
    ],
)  # fmt: skip
def test_bad_hires_settings_are_refused_before_rendering(
    tiny_rpg: RPG,
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any],
    error: type[Exception],
    why: str,
) -> None:
    rendered: list[Any] = []
    monkeypatch.setattr(tiny_rpg.backbone, "encode", lambda *a, **k: rendered.append(a))
    with pytest.raises(error, match=why):
        tiny_rpg.generate(
            GenerationRequest(**{"prompt": "pets", "plan": PLAN, "seed": 1, **fields})
        )
    assert rendered == []


def test_cli_hires_png_re_renders_identically(
    rpg_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        "init.png"
    )
    args = ["generate", "a red cat on the left and a blue dog on the right", "--size", "64x64",
            "--steps", "3", "--seed", "3", "--hires", "1.5", "--hires-strength", "0.7",
            "--init-image", "init.png", "--strength", "0.8", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", "a.png"]) == 0
    Path("init.png").unlink()  # embedded in a.png
    assert main(["generate", "--from", "a.png", "--out", "b.png", "--no-progress"]) == 0
    a, b = Image.open("a.png"), Image.open("b.png")
    assert a.size == (96, 96) and np.array_equal(np.asarray(a), np.asarray(b))
    recorded = load_request("b.png")
    assert recorded.hires == HiresFix(scale=1.5, strength=0.7) and recorded.strength == 0.8
    # --hires 1 turns the recorded pass off; --hires-steps tunes it
    assert main(["generate", "--from", "a.png", "--hires", "1", "--out", "c.png",
                 "--no-progress"]) == 0  # fmt: skip
    assert Image.open("c.png").size == (64, 64) and load_request("c.png").hires is None
    assert main(["generate", "--from", "a.png", "--hires-steps", "5", "--out", "d.png",
                 "--no-progress"]) == 0  # fmt: skip
    assert load_request("d.png").hires == HiresFix(scale=1.5, strength=0.7, steps=5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hires", "0.5"], "--hires: 0.5 is not in [1, 4]"),
        (["--hires-strength", "0.5"], "--hires-strength/--hires-steps tune the hires pass"),
        (["--hires", "2", "--hires-steps", "0"], "--hires-steps: 0 steps: give at least 1"),
    ],
)
def test_cli_hires_flag_errors(
    rpg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err, written = generate_refusal(flags, capsys)
    assert code == 2
    assert message in err
    assert not written


def test_batch_lines_take_hires(tiny_rpg: RPG, tmp_path: Path) -> None:
    line = {"prompt": "a red cat on the left and a blue dog on the right", "steps": 3,
            "width": 64, "height": 64, "seed": 1, "hires": 1.5}  # fmt: skip
    (item,) = expand_requests([(1, line)])
    assert run_batch(tiny_rpg, [item], tmp_path, progress=False).done == 1
    (record,) = read_manifest(tmp_path).values()
    saved = tmp_path / record["files"][0]
    assert Image.open(saved).size == (96, 96)
    assert load_request(saved).hires == HiresFix(scale=1.5)
