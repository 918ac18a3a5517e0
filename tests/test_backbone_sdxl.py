"""The SDXL backbone on a tiny random-weight SDXL: stock equivalence, pooled embeddings,
isolation, processor restore, detection and single-file loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from rpg.attention import (
    RegionalAttnProcessor,
    RegionalConditioning,
    RegionalLayout,
    cross_attention_names,
    region_labels,
)
from rpg.backbones.loading import resolve_model
from rpg.backbones.schedulers import make_scheduler
from rpg.backbones.sdxl import StableDiffusionXLBackbone
from rpg.backbones.tiny.sdxl import write_tiny_sdxl
from rpg.errors import RegistryError
from rpg.models import GenerationRequest, Region, RegionPlan, Row
from rpg.orchestrator import RPG
from single_file import save_sdxl_single_file, sdxl_to_single_file_state_dict

PROMPT = "a red cat sitting on a blue mat"
WINDOW = 77
WIDTH = 32 + 64  # the tiny SDXL's two text encoders, concatenated


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("rpg-xl") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="session")
def sdxl_rpg(tiny_sdxl_path: Path) -> RPG:
    pipe = RPG.from_pretrained(tiny_sdxl_path, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"prompt": PROMPT, "plan": RegionPlan.single(PROMPT), "steps": 3}
    fields.update({"seed": 5, **kw})
    return GenerationRequest(**fields)


def _stock(rpg: RPG, scheduler: str, **call: Any) -> np.ndarray:
    components = dict(rpg.pipe.components)
    components["scheduler"] = make_scheduler(scheduler, rpg.backbone.scheduler_config)
    stock = StableDiffusionXLPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    images: np.ndarray = stock(output_type="np", height=64, width=64, **call).images
    return images


def test_sdxl_folder_is_detected_as_sdxl(sdxl_rpg: RPG, tiny_sdxl_path: Path) -> None:
    assert isinstance(sdxl_rpg.backbone, StableDiffusionXLBackbone)
    assert StableDiffusionXLBackbone.detect(resolve_model(tiny_sdxl_path))
    assert sdxl_rpg.backbone.native_size == (64, 64)


@pytest.mark.parametrize(
    ("scheduler", "guidance", "negative", "steps"),
    [
        ("euler", 5.0, "blurry", 3),
        ("dpm++2m-karras", 7.0, "", 3),  # empty negative: zeros, as SDXL's config asks
        ("euler-a", 0.0, "", 1),  # SDXL-Turbo style: no guidance, one step
    ],
)
def test_one_full_canvas_region_equals_the_stock_pipeline(
    sdxl_rpg: RPG, scheduler: str, guidance: float, negative: str, steps: int
) -> None:
    request = _request(
        scheduler=scheduler, guidance_scale=guidance, negative_prompt=negative, steps=steps
    )
    ours = sdxl_rpg.generate(request, output_type="np").images[0]
    stock = _stock(
        sdxl_rpg,
        scheduler,
        prompt=PROMPT,
        negative_prompt=negative or None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(5),
    )[0]
    assert ours.shape == stock.shape == (64, 64, 3)
    assert stock.std() > 0.01
    assert np.abs(ours - stock).max() <= 1e-4


def test_embeddings_equal_stock_encode_prompt(sdxl_rpg: RPG) -> None:
    cond = sdxl_rpg.backbone.encode(RegionPlan.single(PROMPT), "blurry", guidance=True)
    pos, neg, pooled, neg_pooled = sdxl_rpg.pipe.encode_prompt(
        PROMPT, device=torch.device("cpu"), negative_prompt="blurry"
    )
    assert cond.prompt_embeds.shape == (1, WINDOW, WIDTH)
    for ours, stock in [
        (cond.prompt_embeds, pos),
        (cond.negative_prompt_embeds, neg),
        (cond.pooled_prompt_embeds, pooled),
        (cond.negative_pooled_prompt_embeds, neg_pooled),
    ]:
        torch.testing.assert_close(ours, stock, rtol=0, atol=0)


def test_empty_negative_is_zeros_like_the_stock_pipeline(sdxl_rpg: RPG) -> None:
    cond = sdxl_rpg.backbone.encode(RegionPlan.single(PROMPT), "", guidance=True)
    assert cond.negative_prompt_embeds is not None
    assert cond.negative_pooled_prompt_embeds is not None
    assert not cond.negative_prompt_embeds.any()
    assert not cond.negative_pooled_prompt_embeds.any()
    assert cond.prompt_embeds.abs().sum() > 0


def test_pooled_embedding_comes_from_the_base_prompt(sdxl_rpg: RPG) -> None:
    backbone = sdxl_rpg.backbone
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"], base_prompt="two pets")
    cond = backbone.encode(plan, guidance=False)
    _, _, base_pooled, _ = sdxl_rpg.pipe.encode_prompt(
        "two pets", device=torch.device("cpu"), do_classifier_free_guidance=False
    )
    torch.testing.assert_close(cond.pooled_prompt_embeds, base_pooled, rtol=0, atol=0)
    assert cond.negative_pooled_prompt_embeds is None
    # Without a base prompt the whole plan's prompts are pooled, so both regions count.
    no_base = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
    other = RegionPlan.from_split_ratio("1,1", ["a cat", "a cow"])
    pooled_a = backbone.encode(no_base, guidance=False).pooled_prompt_embeds
    pooled_b = backbone.encode(other, guidance=False).pooled_prompt_embeds
    assert not torch.allclose(pooled_a, pooled_b)


def test_long_region_prompt_uses_both_encoders_for_every_window(sdxl_rpg: RPG) -> None:
    long_text = " ".join(["cat"] * 39 + ["zebra"])
    plan = RegionPlan(rows=[Row(regions=[Region(prompt="a dog"), Region(prompt=long_text)])])
    cond = sdxl_rpg.backbone.encode(plan, guidance=False)
    assert cond.region_spans == ((0, WINDOW), (WINDOW, 3 * WINDOW))
    second = cond.prompt_embeds[0, 2 * WINDOW :]
    assert second[:, :32].abs().sum() > 0 and second[:, 32:].abs().sum() > 0


def test_regions_are_isolated_in_sdxl_attention(sdxl_rpg: RPG) -> None:
    """With no base prompt, changing region 1's tokens leaves every other region's output alone."""
    unet = sdxl_rpg.pipe.unet
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[1].attn2
    plan = RegionPlan.from_split_ratio("1,1,1,1;1,1,2", ["a", "b", "c", "d", "e"])
    layout = RegionalLayout.from_plan(plan, 128, 128)  # this layer: an 8×8 grid
    spans = tuple((i * WINDOW, (i + 1) * WINDOW) for i in range(5))
    generator = torch.Generator().manual_seed(0)
    ctx = torch.randn(2, 5 * WINDOW, WIDTH, generator=generator)
    x = torch.randn(2, 64, attn.to_q.in_features, generator=generator)
    changed = ctx.clone()
    changed[:, slice(*spans[1])] += torch.randn(2, WINDOW, WIDTH, generator=generator)
    processor = RegionalAttnProcessor(
        RegionalConditioning(prompt_embeds=ctx, region_spans=spans), layout, guidance=False
    )
    with torch.no_grad():
        a, b = processor(attn, x, ctx), processor(attn, x, changed)
    labels = region_labels(layout, 8, 8).reshape(-1)
    inside = labels == 1
    assert torch.equal(a[:, ~inside], b[:, ~inside])
    assert not torch.allclose(a[:, inside], b[:, inside])


def _processors(rpg: RPG) -> dict[str, Any]:
    return dict(rpg.pipe.unet.attn_processors)


def test_processors_are_used_and_restored(sdxl_rpg: RPG) -> None:
    before = _processors(sdxl_rpg)
    seen: list[int] = []

    def count(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append(
            sum(isinstance(p, RegionalAttnProcessor) for p in pipe.unet.attn_processors.values())
        )
        return kwargs

    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"], base_prompt="pets")
    sdxl_rpg.generate(_request(plan=plan, steps=2), callback_on_step_end=count)
    cross = cross_attention_names(sdxl_rpg.pipe.unet)
    assert len(cross) == 8  # down 1×2, mid 2, up 2×2 transformer layers
    assert seen == [len(cross)] * 2
    after = _processors(sdxl_rpg)
    assert all(after[k] is before[k] for k in before)

    def explode(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sdxl_rpg.generate(_request(plan=plan, steps=2), callback_on_step_end=explode)
    after = _processors(sdxl_rpg)
    assert all(after[k] is before[k] for k in before)


def test_regional_batch_renders(sdxl_rpg: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1;1", ["a cat", "a dog"], base_prompt="pets")
    result = sdxl_rpg.generate(
        _request(plan=plan, num_images=2, steps=2, width=64, height=96), output_type="np"
    )
    assert [img.shape for img in result.images] == [(96, 64, 3)] * 2
    assert np.abs(result.images[0] - result.images[1]).max() > 1e-3


def test_single_safetensors_file_loads_through_from_single_file(
    sdxl_rpg: RPG, tiny_sdxl_path: Path, tmp_path: Path
) -> None:
    file = save_sdxl_single_file(tiny_sdxl_path, tmp_path / "tiny-sdxl.safetensors")
    info = resolve_model(file, config=tiny_sdxl_path)
    assert info.checkpoint_type == "xl_base"  # diffusers' own reading of the tensor names
    from_file = RPG.from_pretrained(file, config=tiny_sdxl_path, device="cpu", dtype="float32")
    assert isinstance(from_file.backbone, StableDiffusionXLBackbone)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours = getattr(from_file.pipe, name).state_dict()
        reference = getattr(sdxl_rpg.pipe, name).state_dict()
        assert ours.keys() == reference.keys()
        assert all(torch.equal(ours[k], reference[k]) for k in ours), name
    from_file.pipe.set_progress_bar_config(disable=True)
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
    a = from_file.generate(_request(plan=plan, steps=2), output_type="np").images[0]
    b = sdxl_rpg.generate(_request(plan=plan, steps=2), output_type="np").images[0]
    assert np.array_equal(a, b)


def test_single_file_names_are_unique_and_original(sdxl_rpg: RPG) -> None:
    state = sdxl_to_single_file_state_dict(sdxl_rpg.pipe)
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"model", "first_stage_model", "conditioner"}
    assert "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias" in state


def test_unknown_architecture_lists_the_supported_backbones(tmp_path: Path) -> None:
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "KandinskyV22Pipeline"}')
    with pytest.raises(RegistryError) as info:
        RPG.from_pretrained(folder, device="cpu")
    message = str(info.value)
    assert "KandinskyV22Pipeline" in message
    for name in ("sd ", "sdxl", "sd-controlnet", "sdxl-controlnet"):
        assert name in message
