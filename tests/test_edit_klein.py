"""``rpg edit`` on FLUX.2 [klein] through ``Flux2KleinInpaintPipeline`` (``tiny-flux2-klein``).

The inpainting pipeline appends the image to repaint to the joint sequence as condition tokens
on the same patch grid; rpg maps them as a second copy of the canvas. Checked here end to end:
one full-canvas region without base equals the stock inpainting pipeline, a regional edit equals
the naive per-query reference through the whole pipeline (CFG, text ids, condition tokens), and
what cannot be mapped (a reference image, an image of another size) is refused clearly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import rpg.attention.joint_flux2 as joint_flux2
from joint_helpers import naive_flux2_processors
from rpg.attention.joint import JointRegions
from rpg.edit import edit
from rpg.errors import ConfigurationError
from rpg.metadata import PNG_KEY
from rpg.models import GenerationRequest, PlanResult, RegionPlan
from rpg.orchestrator import RPG
from rpg.planners.feedback import EditPlan, RegionChange, Review
from tiny_helpers import torch_threads, write_tiny_models

NAME = "tiny-flux2-klein"
W, H = 144, 80  # 9 × 5 patches: odd on both axes


class ScriptedPlanner:
    """An image-capable planner whose edit changes region ``index`` to ``prompt``."""

    name = "scripted-vision"
    supports_images = True

    def __init__(self, index: int, prompt: str) -> None:
        self.index, self.prompt = index, prompt
        self.calls = 0

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        raise AssertionError("edit must not ask for a fresh plan")

    def review(self, prompt: str, plan: RegionPlan, image: Any) -> Review:
        raise AssertionError("edit does not review")

    def plan_edit(self, instruction: str, image: Any, plan: RegionPlan | None = None) -> EditPlan:
        self.calls += 1
        change = RegionChange(index=self.index, prompt=self.prompt)
        return EditPlan(explanation="scripted", plan=plan, changes=[change])


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> RPG:
    root = tmp_path_factory.mktemp("rpg-edit-klein")
    write_tiny_models(root, (NAME,))
    pipe = RPG.from_pretrained(root / NAME, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _source(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "RGB")


def _stock_inpaint(
    klein: RPG, prompt: str, source: Image.Image, mask: Image.Image, *, seed: int, steps: int
) -> np.ndarray:
    """The stock ``Flux2KleinInpaintPipeline`` on the loaded modules, rpg nowhere."""
    from diffusers import Flux2KleinInpaintPipeline

    stock = Flux2KleinInpaintPipeline(**klein.pipe.components)
    stock.set_progress_bar_config(disable=True)
    out = stock(
        prompt=prompt, image=source, mask_image=mask, strength=1.0, num_inference_steps=steps,
        guidance_scale=4.0, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return np.asarray(out.images[0])


def test_one_full_canvas_region_equals_stock_inpainting(klein: RPG) -> None:
    source = _source()
    plan = RegionPlan.single("a red cat")
    planner = ScriptedPlanner(0, "a green frog")
    transformer = klein.pipe.transformer
    before = dict(transformer.attn_processors)
    out = edit(klein, source, "make it a frog", plan=plan, planner=planner, seed=4, steps=2,
               guidance_scale=4.0)  # fmt: skip
    assert planner.calls == 1 and out.plan.prompts == ["a green frog"]
    assert out.image.size == (W, H) and np.all(np.asarray(out.mask) == 255)
    stock = _stock_inpaint(klein, "a green frog", source, out.mask, seed=4, steps=2)
    assert np.array_equal(np.asarray(out.image), stock)
    assert dict(transformer.attn_processors) == before and not transformer._forward_pre_hooks


@contextmanager
def _naive_regional_flux2(transformer: Any, regions: JointRegions, **kwargs: Any) -> Iterator[Any]:
    """regional_flux2's hooks (rows, text ids), with the naive reference as the processors."""
    with _real_regional_flux2(transformer, regions, **kwargs) as procs:
        assert regions.grid_copies == 2  # the inpainting backbone maps the condition tokens
        transformer.set_attn_processor(naive_flux2_processors(transformer, regions))
        yield procs


_real_regional_flux2 = joint_flux2.regional_flux2


@pytest.mark.parametrize(("scope", "base"), [("global", True), ("region", False), ("region", True)])
def test_regional_edit_matches_naive_reference_and_keeps_the_rest(
    klein: RPG, monkeypatch: pytest.MonkeyPatch, scope: str, base: bool
) -> None:
    plan = RegionPlan.from_split_ratio(
        "1,1,2", ["a red cat", "a blue dog", "a green tree"],
        base_prompt="a sunny scene" if base else None, base_ratio=0.3 if base else 0.0,
    )  # fmt: skip
    source = _source(1)
    # the family's options travel in the request the source image carries
    stored = GenerationRequest(prompt="a sunny scene", options={"image_attention": scope})
    source.info[PNG_KEY] = json.dumps({"request": stored.model_dump(mode="json")})
    kwargs: dict[str, Any] = {"plan": plan, "seed": 2, "steps": 2, "guidance_scale": 4.0,
                              "negative_prompt": "dark"}  # fmt: skip

    def run() -> Any:
        return edit(klein, source, "a frog", planner=ScriptedPlanner(1, "a frog"), **kwargs)

    ours = run()
    assert ours.request.options.get("image_attention", "global") == scope
    monkeypatch.setattr(joint_flux2, "regional_flux2", _naive_regional_flux2)
    naive = run()
    monkeypatch.undo()
    a, b = np.asarray(ours.image, dtype=int), np.asarray(naive.image, dtype=int)
    assert np.abs(a - b).max() <= 1
    # pixels outside the mask are the input's, exactly; inside, the region was repainted
    src, mask = np.asarray(source), np.asarray(ours.mask)
    assert (mask == 0).any() and (mask == 255).any()
    assert np.array_equal(a[mask == 0], src[mask == 0])
    assert not np.array_equal(a[mask == 255], src[mask == 255])
    # the regions matter: the whole-image prompt alone repaints differently
    stock = _stock_inpaint(klein, ours.request.prompt, source, ours.mask, seed=2, steps=2)
    assert not np.array_equal(a[mask == 255], stock[mask == 255])


def test_reference_image_and_other_sizes_are_refused(klein: RPG) -> None:
    """klein's image_reference has tokens on no grid cell: refused, as is an image to repaint
    that is not the size being rendered (the condition tokens must lie on the layout's grid)."""
    painter = klein.backbone.inpaint_backbone()
    assert type(painter.pipe).__name__ == "Flux2KleinInpaintPipeline"
    assert painter.inpaint_refusal() is None
    planner = ScriptedPlanner(0, "a frog")
    with pytest.raises(ConfigurationError, match=r"reference images.*'image_reference'"):
        edit(klein, _source(), "a frog", plan=RegionPlan.single("a cat"), planner=planner,
             steps=1, image_reference=_source(2))  # fmt: skip
    inputs = {"image": Image.new("RGB", (W + 32, H)), "mask_image": Image.new("L", (W, H))}
    with pytest.raises(ConfigurationError, match=r"176x80 but the layout is 144x80"):
        painter.call_inputs(inputs, width=W, height=H)
    big = {"image": Image.new("RGB", (2048, 1024)), "mask_image": Image.new("L", (2048, 1024))}
    with pytest.raises(ConfigurationError, match="at most 1024x1024"):
        painter.call_inputs(big, width=2048, height=1024)
    assert painter.call_inputs({"image": _source()}, width=W, height=H)["image"].size == (W, H)


def test_edit_request_records_klein(klein: RPG) -> None:
    out = edit(klein, _source(), "a frog", plan=RegionPlan.single("a cat"),
               planner=ScriptedPlanner(0, "a frog"), seed=1, steps=1)  # fmt: skip
    assert isinstance(out.request, GenerationRequest)
    assert out.request.width == W and out.request.height == H
    assert out.request.plan == out.plan


def test_edit_refuses_what_klein_cannot_map_before_the_planner_runs(klein: RPG) -> None:
    """A reference image, or an image to repaint over 1024² pixels, is refused before any
    planner call or encoding (the planner is never asked)."""
    planner = ScriptedPlanner(0, "a frog")
    big = Image.new("RGB", (1056, 1024), "white")
    with pytest.raises(ConfigurationError, match="at most 1024x1024"):
        edit(klein, big, "a frog", plan=RegionPlan.single("a cat"), planner=planner, steps=1)
    with pytest.raises(ConfigurationError, match="reference images"):
        edit(klein, _source(), "a frog", plan=RegionPlan.single("a cat"), planner=planner,
             steps=1, image_reference=_source(2))  # fmt: skip
    assert planner.calls == 0
    # the same image at an allowed size goes on to the planner
    edit(klein, _source(), "a frog", plan=RegionPlan.single("a cat"), planner=planner, steps=1)
    assert planner.calls == 1
