"""The diffusers-style call, pipeline arguments that belong to the request, results and exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rpg
from rpg.errors import ConfigurationError
from rpg.metadata import read_metadata
from rpg.models import GenerationRequest, GenerationResult, RegionPlan
from rpg.orchestrator import RPG

PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="two pets")


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_call_like_a_diffusers_pipeline(tiny_rpg: RPG) -> None:
    out = tiny_rpg(
        "two pets",
        plan=PLAN,
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=5.0,
        height=64,
        width=48,
        num_images_per_prompt=2,
        seed=11,
    )
    assert isinstance(out, GenerationResult) and len(out.images) == 2
    assert out.images[0].size == (48, 64)
    assert out.plan == PLAN
    request = out.request
    assert (request.steps, request.guidance_scale, request.width, request.height) == (
        3,
        5.0,
        48,
        64,
    )
    assert (request.negative_prompt, request.num_images, request.seed) == ("blurry", 2, 11)
    # the request it implies renders the same pixels
    again = tiny_rpg.generate(request)
    assert all(
        np.array_equal(_pixels(a), _pixels(b))
        for a, b in zip(out.images, again.images, strict=True)
    )


def test_a_fresh_cpu_generator_stands_for_its_seed(tiny_rpg: RPG) -> None:
    by_seed = tiny_rpg("a cat", plan=RegionPlan.single("a cat"), num_inference_steps=2, seed=9)
    generator = torch.Generator().manual_seed(9)
    by_generator = tiny_rpg(
        "a cat", plan=RegionPlan.single("a cat"), num_inference_steps=2, generator=generator
    )
    assert by_generator.request.seed == 9
    assert np.array_equal(_pixels(by_seed.images[0]), _pixels(by_generator.images[0]))
    pair = [torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)]
    two = tiny_rpg(
        "a cat",
        plan=RegionPlan.single("a cat"),
        num_inference_steps=1,
        num_images_per_prompt=2,
        generator=pair,
    )
    assert two.request.seed == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 1, "generator": torch.Generator().manual_seed(1)}, "not both"),
        (
            {"generator": [torch.Generator().manual_seed(1), torch.Generator().manual_seed(7)]},
            "seed, seed\\+1",
        ),
    ],
)
def test_generator_misuse_is_refused(tiny_rpg: RPG, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        tiny_rpg("a cat", num_inference_steps=1, **kwargs)


def test_a_used_generator_is_refused(tiny_rpg: RPG) -> None:
    generator = torch.Generator().manual_seed(3)
    torch.randn(2, generator=generator)
    with pytest.raises(ConfigurationError, match="drawn numbers"):
        tiny_rpg("a cat", num_inference_steps=1, generator=generator)


def test_call_needs_a_prompt_or_a_plan(tiny_rpg: RPG) -> None:
    with pytest.raises(ConfigurationError, match="prompt, a plan"):
        tiny_rpg()
    out = tiny_rpg(plan=PLAN, num_inference_steps=1, seed=1)
    assert out.request.prompt == "two pets"


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("seed", "GenerationRequest field"),
        ("num_inference_steps", "steps field"),
        ("height", "height field"),
        ("generator", "seed field"),
        ("prompt_embeds", "plan"),
        ("num_images_per_prompt", "num_images field"),
        ("guidance_scale", "guidance_scale field"),
        ("return_dict", "GenerationResult"),
    ],
)
def test_generate_names_the_field_for_a_pipeline_argument(
    tiny_rpg: RPG, key: str, field: str
) -> None:
    with pytest.raises(ConfigurationError, match=field) as info:
        tiny_rpg.generate(GenerationRequest(prompt="a cat", steps=1), **{key: 3})
    assert f"{key}=" in str(info.value)


def test_other_pipeline_arguments_still_reach_the_pipeline(tiny_rpg: RPG) -> None:
    request = GenerationRequest(prompt="a cat", plan=RegionPlan.single("a cat"), steps=2, seed=1)
    plain = tiny_rpg.generate(request, output_type="np").images[0]
    # not rpg's to refuse: the stock pipeline takes eta (and DPM++ ignores it)
    same = tiny_rpg.generate(request, output_type="np", eta=0.5).images[0]
    assert np.array_equal(plain, same)


def test_result_save_writes_the_png_with_its_request(tiny_rpg: RPG, tmp_path: Path) -> None:
    out = tiny_rpg("two pets", plan=PLAN, num_inference_steps=2, seed=5, num_images_per_prompt=2)
    first = out.save(tmp_path / "first.png")
    second = out.save(tmp_path / "second.png", index=1)
    assert rpg.load_request(first).seed == 5 and rpg.load_request(second).seed == 6
    assert rpg.load_request(second).num_images == 1
    assert read_metadata(first)["plan"] == json.loads(PLAN.model_dump_json())
    again = tiny_rpg.generate(rpg.load_request(second))
    assert np.array_equal(_pixels(again.images[0]), _pixels(out.images[1]))
    with pytest.raises(ValueError, match=r"\.png"):
        out.save(tmp_path / "x.jpg")
    arrays = tiny_rpg.generate(out.request, output_type="np")
    with pytest.raises(TypeError, match="output_type='pil'"):
        arrays.save(tmp_path / "x.png")


def test_the_package_exports_the_planner_protocol_and_png_helpers() -> None:
    from rpg.metadata import load_request, save_png
    from rpg.planners.base import Planner

    assert rpg.Planner is Planner and rpg.save_png is save_png
    assert rpg.load_request is load_request
    assert {"Planner", "save_png", "load_request"} <= set(rpg.__all__)


# --------------------------------------------------------------------------- frozen models


def test_frozen_models_hold_tuples_and_still_speak_json() -> None:
    plan = RegionPlan.model_validate(json.loads(PLAN.model_dump_json()))
    assert isinstance(plan.rows, tuple) and isinstance(plan.rows[0].regions, tuple)
    assert plan == PLAN
    request = GenerationRequest(prompt="a", controls=[{"controlnet": "tiny-controlnet"}])
    assert isinstance(request.controls, tuple)
    assert GenerationRequest.model_validate_json(request.model_dump_json()) == request
    schema = RegionPlan.model_json_schema()
    assert schema["properties"]["rows"]["type"] == "array"
    assert "prefixItems" not in json.dumps(schema)  # a variadic tuple is a plain JSON array
    row = schema["$defs"]["Row"]["properties"]["regions"]
    assert row["type"] == "array" and row["minItems"] == 1


def test_generation_result_images_are_not_a_pydantic_field(tiny_rpg: RPG) -> None:
    out = tiny_rpg("a cat", num_inference_steps=1, seed=1)
    assert not hasattr(GenerationResult, "model_fields")
    out.images[0].save  # noqa: B018 - PIL images, as before
    assert out.plan_result is not None and out.timings["total"] > 0
