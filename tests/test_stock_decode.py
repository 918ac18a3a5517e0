"""Decoding is the stock pipeline's own, in half precision too.

The SDXL 1.0 VAE overflows in float16, so the stock SDXL pipelines upcast it to float32 when its
config sets ``force_upcast``, and they undo ``latents_mean``/``latents_std`` when the config has
them. A tiny SDXL whose VAE config has both, run in float16 and bfloat16 on the CPU, must give
the stock pipeline's pixels with one full-canvas region; so must SD and both ControlNet
backbones. A safety checker and ``output_type="latent"`` behave as in the stock pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rpg.backbones.tiny.controlnet import write_tiny_controlnet
from rpg.backbones.tiny.sd import write_tiny_sd
from rpg.backbones.tiny.sdxl import write_tiny_sdxl
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG

PROMPT = "a red cat sitting on a blue mat"
HALF = [torch.float16, torch.bfloat16]


def _vae_config(folder: Path, **changes: Any) -> None:
    path = folder / "vae" / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SD and SDXL folders whose VAEs ask for float32 and normalise their latents."""
    root = tmp_path_factory.mktemp("rpg-decode")
    stats = {
        "force_upcast": True,
        "latents_mean": [0.5, -0.25, 0.1, -0.4],
        "latents_std": [2.0, 0.5, 1.5, 0.75],
    }
    for name, writer in (("sd", write_tiny_sd), ("sdxl", write_tiny_sdxl)):
        writer(root / name, seed=0)
        _vae_config(root / name, **stats)
    write_tiny_controlnet(root / "cn-sd", sdxl=False, seed=0)
    write_tiny_controlnet(root / "cn-sdxl", sdxl=True, seed=0)
    return root


@pytest.fixture(scope="module")
def control_image() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((12, 20, 50, 44), outline=(255, 255, 255), width=2)
    return image


def _pipeline(models: Path, kind: str, dtype: torch.dtype) -> Any:
    import diffusers

    xl = kind.startswith("sdxl")
    folder = models / ("sdxl" if xl else "sd")
    options: dict[str, Any] = {"dtype": dtype}
    if kind.endswith("-controlnet"):
        net = diffusers.ControlNetModel.from_pretrained(
            models / ("cn-sdxl" if xl else "cn-sd"), dtype=dtype
        )
        cls = (
            diffusers.StableDiffusionXLControlNetPipeline
            if xl
            else diffusers.StableDiffusionControlNetPipeline
        )
        options["controlnet"] = net
    else:
        cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    if not xl:
        options.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(folder, local_files_only=True, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd-controlnet", "sdxl-controlnet"])
def test_half_precision_decodes_like_the_stock_pipeline(
    models: Path, control_image: Image.Image, kind: str, dtype: torch.dtype
) -> None:
    pipe = _pipeline(models, kind, dtype)
    assert pipe.vae.dtype == dtype and pipe.vae.config.force_upcast
    rpg = RPG.from_pipeline(pipe)
    rpg.backbone.set_scheduler("euler")
    call: dict[str, Any] = {"image": control_image} if kind.endswith("-controlnet") else {}
    request = GenerationRequest(
        prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=3, seed=5, guidance_scale=5.0
    )
    ours = rpg.generate(request, output_type="np", **call).images[0]
    assert pipe.vae.dtype == dtype  # the upcast is undone after decoding, as stock does

    stock = pipe(
        prompt=PROMPT,
        num_inference_steps=3,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
        **call,
    ).images[0]
    assert not np.isnan(ours).any()
    assert stock.std() > 0.01
    assert np.abs(ours.astype(np.float64) - stock).max() <= 1 / 255


def test_latent_output_is_the_stock_latents(models: Path) -> None:
    pipe = _pipeline(models, "sdxl", torch.float32)
    rpg = RPG.from_pipeline(pipe)
    rpg.backbone.set_scheduler("euler")
    request = GenerationRequest(prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=2, seed=1)
    result = rpg.generate(request, output_type="latent")
    stock = pipe(
        prompt=PROMPT,
        num_inference_steps=2,
        guidance_scale=result.request.guidance_scale,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
    ).images
    assert len(result.images) == 1 and result.images[0].shape == (4, 8, 8)
    torch.testing.assert_close(result.images[0], stock[0], rtol=0, atol=1e-5)
    assert set(result.timings) == {"plan", "encode", "denoise", "decode", "total"}


def _flagging_safety_checker() -> tuple[Any, Any]:
    """A tiny CLIP safety checker that flags every image, and its feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # every cosine similarity is above it
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    return checker, extractor


def test_a_safety_checker_works_as_in_the_stock_pipeline(models: Path) -> None:
    from diffusers import StableDiffusionPipeline

    checker, extractor = _flagging_safety_checker()
    pipe = StableDiffusionPipeline.from_pretrained(
        models / "sd", safety_checker=checker, feature_extractor=extractor, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    rpg = RPG.from_pipeline(pipe)
    request = GenerationRequest(prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=2, seed=1)
    result = rpg.generate(request, output_type="np")
    assert result.nsfw_content_detected == [True]
    assert not result.images[0].any()  # blacked out by the stock pipeline
    latent = rpg.generate(request, output_type="latent")
    assert latent.nsfw_content_detected is None and latent.images[0].any()


def test_step_callback_still_runs_and_can_change_latents(models: Path) -> None:
    pipe = _pipeline(models, "sd", torch.float32)
    rpg = RPG.from_pipeline(pipe)
    request = GenerationRequest(
        prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=3, seed=1, scheduler="euler"
    )
    seen: list[int] = []

    def zero_latents(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append(step)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    result = rpg.generate(request, output_type="latent", callback_on_step_end=zero_latents)
    assert seen == [0, 1, 2]
    assert not result.images[0].any()  # the callback's return value was honoured
    assert result.timings["decode"] >= 0 and result.timings["denoise"] > 0
