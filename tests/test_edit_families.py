"""``edit`` on every family through its stock inpainting pipeline, on the one render route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
from PIL import Image

from rpg.edit import edit
from rpg.errors import ConfigurationError
from rpg.models import PlanResult, RegionPlan
from rpg.orchestrator import RPG
from rpg.planners.feedback import EditPlan, RegionChange, Review
from tiny_helpers import torch_threads, write_tiny_models

PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")


class FakeVisionPlanner:
    """An image-capable planner that answers from a script and counts its calls."""

    name = "fake-vision"
    supports_images = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        raise AssertionError("edit must not ask for a fresh plan")

    def review(self, prompt: str, plan: RegionPlan, image: Any) -> Review:
        raise AssertionError("edit does not review")

    def plan_edit(self, instruction: str, image: Any, plan: RegionPlan | None = None) -> EditPlan:
        self.calls.append(instruction)
        change = RegionChange(index=1, prompt="a green frog")
        return EditPlan(explanation="the right region", plan=plan, changes=[change])


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rpg-edit-cache")
    write_tiny_models(root, ("tiny-flux", "tiny-sd3", "tiny-flux2-klein"))
    return root


def _load(models: Path, name: str) -> RPG:
    pipe = RPG.from_pretrained(models / name, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("name", "pipeline"),
    [
        ("tiny-flux", "FluxInpaintPipeline"),
        ("tiny-sd3", "StableDiffusion3InpaintPipeline"),
        ("tiny-flux2-klein", "Flux2KleinInpaintPipeline"),
    ],
)
def test_edit_repaints_only_the_changed_region(models: Path, name: str, pipeline: str) -> None:
    pipe = _load(models, name)
    if not hasattr(diffusers, pipeline):
        # an older diffusers (the declared floor): the family is refused, clearly, before any
        # planner call — "klein only if diffusers has one"
        refused = FakeVisionPlanner()
        with pytest.raises(ConfigurationError, match=f"has no {pipeline}"):
            edit(pipe, Image.new("RGB", (64, 64)), "make the dog a frog", plan=PLAN,
                 planner=refused, steps=2)  # fmt: skip
        assert refused.calls == []
        return
    assert type(pipe.backbone.inpaint_backbone().pipe).__name__ == pipeline
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    planner = FakeVisionPlanner()
    transformer = pipe.pipe.transformer
    before = dict(transformer.attn_processors)
    scheduler = pipe.pipe.scheduler

    out = edit(pipe, source, "make the dog a frog", plan=PLAN, planner=planner, seed=1, steps=2)

    assert planner.calls == ["make the dog a frog"]
    assert out.plan.prompts == ["a red cat", "a green frog"]
    src, new, mask = np.asarray(source), np.asarray(out.image), np.asarray(out.mask)
    assert (mask == 0).any() and (mask == 255).any()
    assert np.array_equal(new[mask == 0], src[mask == 0])
    assert not np.array_equal(new[mask == 255], src[mask == 255])
    # the route left the loaded pipeline as it was
    assert dict(transformer.attn_processors) == before and pipe.pipe.scheduler is scheduler
    assert out.request.scheduler == "default" and out.request.plan == out.plan


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("tiny-flux", r"cannot repaint with 'flux'.*has no NoSuchInpaintPipeline"),
        ("tiny-sd3", r"cannot repaint with 'sd3'.*has no NoSuchInpaintPipeline"),
    ],
)
def test_a_family_without_inpainting_is_refused_before_planning(
    models: Path, monkeypatch: pytest.MonkeyPatch, name: str, why: str
) -> None:
    from rpg.backbones.flux import FluxBackbone
    from rpg.backbones.sd3 import SD3Backbone

    pipe = _load(models, name)
    for cls in (FluxBackbone, SD3Backbone):
        monkeypatch.setattr(cls, "inpaint_pipeline_name", "NoSuchInpaintPipeline")
    planner = FakeVisionPlanner()
    encoded: list[Any] = []
    monkeypatch.setattr(pipe.backbone, "encode", lambda *a, **k: encoded.append(a))
    with pytest.raises(ConfigurationError, match=why):
        edit(pipe, Image.new("RGB", (64, 64)), "make it blue", planner=planner)
    assert planner.calls == [] and encoded == []
