"""A pipeline handed to rpg comes back as it was: scheduler, attention processors, their weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from rpg import RPG, GenerationRequest, RegionPlan

PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")


def _request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"prompt": "pets", "plan": PLAN, "steps": 2, "seed": 3}
    fields.update(kw)
    return GenerationRequest(**fields)


@pytest.fixture
def user_pipe(tiny_rpg: RPG) -> StableDiffusionPipeline:
    """A user's own pipeline (sharing the tiny model's modules), set to Euler ancestral."""
    components = dict(tiny_rpg.pipe.components)
    components["scheduler"] = EulerAncestralDiscreteScheduler.from_config(
        tiny_rpg.backbone.scheduler_config
    )
    pipe = StableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_from_pipeline_keeps_the_users_scheduler(user_pipe: StableDiffusionPipeline) -> None:
    own = user_pipe.scheduler
    wrapped = RPG.from_pipeline(user_pipe)
    result = wrapped(prompt="pets", plan=PLAN, num_inference_steps=2, seed=3, output_type="np")
    assert user_pipe.scheduler is own
    assert result.request.scheduler == "euler-a"  # recorded under its name: the PNG re-renders
    # the same pixels as rendering with that scheduler named
    named = wrapped.generate(_request(scheduler="euler-a"), output_type="np")
    assert np.array_equal(result.images[0], named.images[0])
    assert user_pipe.scheduler is own


def test_a_requests_scheduler_is_undone_after_the_call(
    user_pipe: StableDiffusionPipeline,
) -> None:
    own = user_pipe.scheduler
    wrapped = RPG.from_pipeline(user_pipe)
    seen: list[Any] = []

    def spy(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append(type(pipe.scheduler))
        return {}

    result = wrapped.generate(_request(scheduler="dpm++2m-karras"), callback_on_step_end=spy)
    assert seen and set(seen) == {DPMSolverMultistepScheduler}
    assert result.request.scheduler == "dpm++2m-karras"
    assert user_pipe.scheduler is own
    # also when the call fails part-way
    with pytest.raises(RuntimeError, match="boom"):

        def fail(*args: Any) -> dict[str, Any]:
            raise RuntimeError("boom")

        wrapped.generate(_request(scheduler="ddim"), callback_on_step_end=fail)
    assert user_pipe.scheduler is own


def test_a_loaded_model_gets_the_default_scheduler_for_the_call_only(tiny_rpg: RPG) -> None:
    own = tiny_rpg.pipe.scheduler
    result = tiny_rpg.generate(_request())
    assert result.request.scheduler == tiny_rpg.backbone.default_scheduler
    assert tiny_rpg.pipe.scheduler is own


class _UserProcessor(AttnProcessor):
    """A processor of the user's own (a stand-in for a LoRA/IP-adapter one)."""


class _WeightedProcessor(torch.nn.Module):
    """A processor with trained weights, as LoRA-era and IP-adapter processors are."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.0]))
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kw: Any) -> Any:
        return self.inner(attn, hidden_states, *args, **kw) * self.scale


def test_user_and_weighted_processors_come_back_exactly(
    user_pipe: StableDiffusionPipeline,
) -> None:
    unet = user_pipe.unet
    before_default = dict(unet.attn_processors)
    names = sorted(before_default)
    procs: dict[str, Any] = {}
    for i, name in enumerate(names):
        procs[name] = _WeightedProcessor() if i % 2 else _UserProcessor()
    unet.set_attn_processor(dict(procs))  # diffusers empties the dict it is given
    try:
        keys = sorted(k for k in unet.state_dict() if k.endswith(".scale"))
        assert keys
        wrapped = RPG.from_pipeline(user_pipe)
        wrapped.generate(_request())
        after = unet.attn_processors
        assert all(after[k] is procs[k] for k in names)
        assert sorted(k for k in unet.state_dict() if k.endswith(".scale")) == keys

        # and after a call that fails part-way through the denoising
        def fail(*args: Any) -> dict[str, Any]:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            wrapped.generate(_request(), callback_on_step_end=fail)
        assert all(unet.attn_processors[k] is procs[k] for k in names)
    finally:
        unet.set_attn_processor(dict(before_default))
