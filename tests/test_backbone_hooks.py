"""Backbone hooks the orchestrator goes through: extra inputs and per-call attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rpg.attention import RegionalAttnProcessor
from rpg.backbones.base import PreparedInputs
from rpg.backbones.controlnet import ControlNetBackboneMixin
from rpg.backbones.sd import StableDiffusionBackbone
from rpg.errors import ConfigurationError
from rpg.models import ControlInput, GenerationRequest, RegionPlan
from rpg.orchestrator import RPG

PROMPT = "a red cat"


class ZeroNoiseBackbone(StableDiffusionBackbone):
    """Adds an input of its own (all-zero starting latents) and records it in the request."""

    name = "sd-zero-noise"

    def prepare_inputs(
        self, request: GenerationRequest, pipeline_kwargs: Any, *, width: int, height: int
    ) -> PreparedInputs:
        prepared = super().prepare_inputs(request, pipeline_kwargs, width=width, height=height)
        latents = torch.zeros(request.num_images, 4, height // 8, width // 8)
        return PreparedInputs(
            prepared.request.model_copy(update={"negative_prompt": "zero noise"}),
            {**prepared.pipeline_kwargs, "latents": latents},
        )


def test_generate_goes_through_the_backbone_input_hook(tiny_rpg: RPG) -> None:
    custom = RPG(ZeroNoiseBackbone(tiny_rpg.pipe))
    request = GenerationRequest(prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=2, seed=1)
    out = custom.generate(request, output_type="np")
    plain = tiny_rpg.generate(
        request.model_copy(update={"negative_prompt": "zero noise"}), output_type="np"
    )
    with tiny_rpg.backbone.using_scheduler(out.request.scheduler):
        zero = tiny_rpg.pipe(
            prompt_embeds=tiny_rpg.backbone.encode(
                RegionPlan.single(PROMPT), "zero noise"
            ).prompt_embeds,
            negative_prompt_embeds=tiny_rpg.backbone.encode(
                RegionPlan.single(PROMPT), "zero noise"
            ).negative_prompt_embeds,
            latents=torch.zeros(1, 4, 8, 8),
            num_inference_steps=2,
            guidance_scale=out.request.guidance_scale,
            output_type="np",
        ).images
    assert out.request.negative_prompt == "zero noise"  # the hook's request is recorded
    assert not np.array_equal(out.images[0], plain.images[0])
    assert np.abs(out.images[0] - zero[0]).max() <= 1e-5


def test_the_base_hook_refuses_controls_it_cannot_serve(tiny_rpg: RPG) -> None:
    request = GenerationRequest(
        prompt=PROMPT, controls=[ControlInput(controlnet="tiny-controlnet", image="e.png")]
    )
    with pytest.raises(ConfigurationError, match="loaded without ControlNet"):
        tiny_rpg.backbone.prepare_inputs(request, {}, width=64, height=64)


@pytest.fixture(scope="module")
def controlnet_rpg(tiny_sd_path: Path, tmp_path_factory: pytest.TempPathFactory) -> RPG:
    from rpg.backbones.tiny.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path_factory.mktemp("cn") / "cn", sdxl=False)
    rpg = RPG.from_pretrained(tiny_sd_path, device="cpu", dtype="float32", controlnet=net)
    rpg.pipe.set_progress_bar_config(disable=True)
    return rpg


def _installed(model: Any) -> list[RegionalAttnProcessor]:
    return [p for p in model.attn_processors.values() if isinstance(p, RegionalAttnProcessor)]


@pytest.mark.parametrize("guess", [False, True])
def test_guess_mode_is_decided_per_call_without_backbone_state(
    controlnet_rpg: RPG, guess: bool
) -> None:
    backbone = controlnet_rpg.backbone
    assert isinstance(backbone, ControlNetBackboneMixin)
    plan = RegionPlan.single(PROMPT)
    conditioning = backbone.encode(plan, "", guidance=True)
    layout = backbone.layout(plan, 64, 64)
    state = dict(vars(backbone))
    with backbone.attention_context(
        conditioning, layout, guidance=True, cache_kv=False, pipeline_kwargs={"guess_mode": guess}
    ):
        unet = _installed(controlnet_rpg.pipe.unet)
        net = _installed(controlnet_rpg.pipe.controlnet)
        assert unet and net
        assert all(p.guidance for p in unet)
        # in guess mode the ControlNet sees only the conditional half of the batch
        assert all(p.guidance is not guess for p in net)
        assert (unet[0] is net[0]) is not guess
        assert backbone.attention_models() == [
            controlnet_rpg.pipe.unet,
            controlnet_rpg.pipe.controlnet,
        ]
    assert vars(backbone) == state
    assert not _installed(controlnet_rpg.pipe.unet) and not _installed(
        controlnet_rpg.pipe.controlnet
    )


def test_guess_mode_render_still_works(controlnet_rpg: RPG) -> None:
    image = Image.new("RGB", (64, 64), "white")
    request = GenerationRequest(prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=2, seed=1)
    out = controlnet_rpg.generate(request, image=image, guess_mode=True, output_type="np")
    assert out.images[0].shape == (64, 64, 3) and not np.isnan(out.images[0]).any()
    assert out.request.controls[0].scale == 1.0
