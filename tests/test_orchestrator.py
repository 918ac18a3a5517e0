"""``rpg.RPG`` end to end on the tiny SD model: stock equivalence, determinism, restore, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from pydantic import ValidationError

import rpg
from rpg.attention.processor import RegionalAttnProcessor
from rpg.backbones.schedulers import make_scheduler
from rpg.errors import ConfigurationError, RegistryError
from rpg.models import GenerationRequest, Region, RegionPlan, Row
from rpg.orchestrator import RPG

PROMPT = "a red cat sitting on a blue mat"


def _request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "plan": RegionPlan.single(PROMPT),
        "steps": 3,
        "seed": 5,
    }
    fields.update(kw)
    return GenerationRequest(**fields)


def _stock(tiny_rpg: RPG, scheduler: str, **call: Any) -> np.ndarray:
    components = dict(tiny_rpg.pipe.components)
    components["scheduler"] = make_scheduler(scheduler, tiny_rpg.backbone.scheduler_config)
    stock = StableDiffusionPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    images: np.ndarray = stock(output_type="np", **call).images
    return images


@pytest.mark.parametrize(
    ("scheduler", "guidance"), [("dpm++2m-karras", 7.0), ("euler-a", 5.0), ("ddim", 1.0)]
)
def test_one_full_canvas_region_equals_the_stock_pipeline(
    tiny_rpg: RPG, scheduler: str, guidance: float
) -> None:
    request = _request(scheduler=scheduler, guidance_scale=guidance, negative_prompt="blurry")
    ours = tiny_rpg.generate(request, output_type="np").images[0]
    stock = _stock(
        tiny_rpg,
        scheduler,
        prompt=PROMPT,
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(5),
    )[0]
    assert ours.shape == stock.shape == (64, 64, 3)
    assert stock.std() > 0.01  # a real image, not a constant
    assert np.abs(ours - stock).max() <= 1e-4


def test_same_seed_same_image_and_other_seed_other_image(tiny_rpg: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")
    a = tiny_rpg.generate(_request(plan=plan), output_type="np").images[0]
    b = tiny_rpg.generate(_request(plan=plan), output_type="np").images[0]
    c = tiny_rpg.generate(_request(plan=plan, seed=6), output_type="np").images[0]
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_missing_seed_is_picked_and_recorded(tiny_rpg: RPG) -> None:
    first = tiny_rpg.generate(_request(seed=None), output_type="np")
    assert first.request.seed is not None
    again = tiny_rpg.generate(first.request, output_type="np")
    assert np.array_equal(first.images[0], again.images[0])


def test_request_is_completed_and_timed(tiny_rpg: RPG) -> None:
    result = tiny_rpg.generate(GenerationRequest(prompt="a cat on the left and a dog", steps=2))
    assert result.plan_result is not None  # the rules planner made the plan
    assert result.request.plan == result.plan
    assert (result.request.width, result.request.height) == (64, 64)
    assert result.request.model == tiny_rpg.model
    assert set(result.timings) >= {"plan", "encode", "denoise", "decode", "total"}
    assert result.images[0].size == (64, 64)


def test_base_ratio_override_changes_the_rendered_plan(tiny_rpg: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"], base_prompt="pets")
    low = tiny_rpg.generate(_request(plan=plan, base_ratio=0.0), output_type="np")
    high = tiny_rpg.generate(_request(plan=plan, base_ratio=0.9), output_type="np")
    assert low.plan.base_ratio == 0.0 and high.plan.base_ratio == 0.9
    assert np.abs(low.images[0] - high.images[0]).max() > 1e-4


def test_batch_image_i_is_the_single_image_with_seed_plus_i(tiny_rpg: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
    batch = tiny_rpg.generate(_request(plan=plan, num_images=2), output_type="np")
    assert len(batch.images) == 2
    single = tiny_rpg.generate(_request(plan=plan, seed=6), output_type="np").images[0]
    assert np.abs(batch.images[1] - single).max() <= 1e-4
    assert np.abs(batch.images[0] - batch.images[1]).max() > 1e-3


@pytest.mark.parametrize(("width", "height"), [(72, 136), (136, 72), (128, 64), (64, 128)])
def test_odd_latent_sizes_and_aspect_ratios(tiny_rpg: RPG, width: int, height: int) -> None:
    plan = RegionPlan.from_split_ratio("1,2,1;1,1", ["a", "b", "c"], base_prompt="scene")
    result = tiny_rpg.generate(_request(plan=plan, width=width, height=height, steps=2))
    assert result.images[0].size == (width, height)


def _processors(tiny_rpg: RPG) -> dict[str, Any]:
    return dict(tiny_rpg.pipe.unet.attn_processors)


def test_processors_are_used_during_and_restored_after_generate(tiny_rpg: RPG) -> None:
    before = _processors(tiny_rpg)
    seen: list[int] = []

    def count_regional(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        procs = pipe.unet.attn_processors.values()
        seen.append(sum(isinstance(p, RegionalAttnProcessor) for p in procs))
        return kwargs

    tiny_rpg.generate(_request(), callback_on_step_end=count_regional)
    assert seen and all(n > 0 for n in seen)
    after = _processors(tiny_rpg)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_processors_are_restored_when_generate_raises(tiny_rpg: RPG) -> None:
    before = _processors(tiny_rpg)

    def explode(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        if step == 1:
            raise RuntimeError("boom at step 1")
        return kwargs

    with pytest.raises(RuntimeError, match="boom at step 1"):
        tiny_rpg.generate(_request(), callback_on_step_end=explode)
    after = _processors(tiny_rpg)
    assert all(after[k] is before[k] for k in before)
    assert not any(isinstance(p, RegionalAttnProcessor) for p in after.values())


def test_size_not_a_multiple_of_8_is_rejected_with_a_hint() -> None:
    with pytest.raises(ValidationError, match=r"multiple of 8, got 100 \(try 96 or 104\)"):
        GenerationRequest(prompt="a cat", width=100)


def test_empty_prompt_is_rejected(tiny_rpg: RPG) -> None:
    with pytest.raises(ValidationError, match="must not be empty"):
        GenerationRequest(prompt="   ")
    with pytest.raises(ConfigurationError, match="prompt is empty"):
        tiny_rpg.plan("  ")


def test_unknown_scheduler_is_a_clear_error(tiny_rpg: RPG) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown scheduler 'fast'.*euler-a"):
        tiny_rpg.generate(_request(scheduler="fast"))


def test_plans_are_remembered_per_prompt(tiny_rpg: RPG) -> None:
    first = tiny_rpg.plan("a cat on the left and a dog on the right")
    assert tiny_rpg.plan("a cat on the left and a dog on the right") is first


def test_from_pipeline_wraps_an_existing_pipeline(tiny_rpg: RPG) -> None:
    stock = StableDiffusionPipeline(**tiny_rpg.pipe.components)
    stock.set_progress_bar_config(disable=True)
    wrapped = RPG.from_pipeline(stock)
    assert wrapped.backbone.name == "sd"
    result = wrapped.generate(_request(steps=2), output_type="np")
    # the wrapped pipeline keeps its own scheduler, and the request records it
    assert result.request.scheduler == "default"
    assert type(stock.scheduler) is type(tiny_rpg.backbone.scheduler_named("default"))
    ours = tiny_rpg.generate(_request(steps=2, scheduler="default"), output_type="np")
    assert np.array_equal(result.images[0], ours.images[0])
    with pytest.raises(RegistryError, match="no registered backbone drives"):
        RPG.from_pipeline(object())


def test_from_pipeline_records_a_pipeline_loaded_from_a_path(tiny_sd_path: Path) -> None:
    # diffusers records the Path object it was given as _name_or_path; requests need a string
    stock = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    stock.set_progress_bar_config(disable=True)
    wrapped = RPG.from_pipeline(stock)
    assert wrapped.model == str(tiny_sd_path)
    assert wrapped.generate(_request(steps=1)).request.model == str(tiny_sd_path)


def test_rpg_is_exported_lazily_and_loads_by_path(tiny_sd_path: Path) -> None:
    assert rpg.RPG is RPG
    pipe = rpg.RPG.from_pretrained(str(tiny_sd_path), device="cpu", backbone="sd")
    assert pipe.backbone.name == "sd" and pipe.model == str(tiny_sd_path)


def test_region_negative_prompt_reaches_the_image(tiny_rpg: RPG) -> None:
    plain = RegionPlan(rows=[Row(regions=[Region(prompt="a cat"), Region(prompt="a dog")])])
    own = RegionPlan(
        rows=[Row(regions=[Region(prompt="a cat"), Region(prompt="a dog", negative_prompt="fur")])]
    )
    a = tiny_rpg.generate(_request(plan=plain), output_type="np").images[0]
    b = tiny_rpg.generate(_request(plan=own), output_type="np").images[0]
    assert np.abs(a - b).max() > 1e-4
