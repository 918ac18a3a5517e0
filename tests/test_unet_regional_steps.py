"""``regional_steps`` on the UNet families: the first steps regional, the rest plain attention
over the base prompt (or the whole prompt, packed for them), switched by the step callback."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attention_helpers import two_by_two
from rpg import GenerationRequest, RegionPlan
from rpg.attention import RegionalAttnProcessor, RegionalConditioning
from rpg.attention.region_isolation import RegionGroupNorm, RegionSelfAttnProcessor
from rpg.attention.regional_steps import RegionalStepSwitch, regional_step_count
from rpg.orchestrator import RPG

PROMPT = "a red cat and a blue dog"


def test_a_step_that_is_not_regional_is_plain_attention_over_the_global_span() -> None:
    torch.manual_seed(0)
    cond, layout = two_by_two(64, 64)  # base span (0, 5), four region spans after it
    attn = Attention(query_dim=32, cross_attention_dim=32, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 64, 32), torch.randn(2, 25, 32)
    processor = RegionalAttnProcessor(cond, layout, guidance=True)
    assert processor.global_span == (0, 5)
    with torch.no_grad():
        regional = processor(attn, x, ctx)
        processor.regional = False
        plain = processor(attn, x, ctx)
        # negative half: the shared negative span, as before; positive half: the base span
        negative = AttnProcessor2_0()(attn, x[:1], ctx[:1, :5])
        positive = AttnProcessor2_0()(attn, x[1:], ctx[1:, :5])
    torch.testing.assert_close(plain, torch.cat([negative, positive]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain[1:], regional[1:], atol=1e-3)
    torch.testing.assert_close(plain[:1], regional[:1])  # the negative half keeps its rules


def test_isolation_layers_act_as_the_stock_ones_after_the_regional_steps() -> None:
    torch.manual_seed(1)
    cond, layout = two_by_two(64, 64)
    processor = RegionalAttnProcessor(cond, layout, guidance=True)
    processor.regional = False
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    norm = torch.nn.GroupNorm(4, 16)
    x, image = torch.randn(2, 64, 32), torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(RegionSelfAttnProcessor(processor)(attn, x), attn(x))
        torch.testing.assert_close(RegionGroupNorm(norm, processor)(image), norm(image))


@pytest.mark.parametrize(("fraction", "steps", "count"), [(0.5, 4, 2), (0.3, 4, 2), (0.01, 9, 1)])
def test_the_regional_step_count(fraction: float, steps: int, count: int) -> None:
    assert regional_step_count(fraction, steps) == count


def test_the_switch_needs_text_for_the_plain_steps() -> None:
    cond, layout = two_by_two(64, 64)
    no_base = RegionalConditioning(
        prompt_embeds=cond.prompt_embeds, region_spans=cond.region_spans, negative_span=(0, 5)
    )
    layout = type(layout)(
        rows=layout.rows, base_weights=(0.0,) * 4, height=64, width=64
    )  # fmt: skip
    processor = RegionalAttnProcessor(no_base, layout, guidance=True)
    with pytest.raises(ValueError, match="needs text for the steps that are not regional"):
        RegionalStepSwitch([processor], 0.5, 4)


def _flags(rpg: RPG, request: GenerationRequest, **call: Any) -> list[bool]:
    """The ``regional`` flag of the cross-attention processor at every UNet forward."""
    seen: list[bool] = []

    def hook(module: Any, args: Any) -> None:
        found = [p for p in module.attn_processors.values() if isinstance(p, RegionalAttnProcessor)]
        seen.append(found[0].regional)

    handle = rpg.pipe.unet.register_forward_pre_hook(hook)
    try:
        rpg.generate(request, output_type="latent", **call)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("base", [False, True])
def test_renders_switch_after_the_regional_steps(tiny_rpg: RPG, base: bool) -> None:
    plan = RegionPlan.from_split_ratio(
        "1,1", ["a red cat", "a blue dog"], base_prompt=PROMPT if base else None,
        base_ratio=0.3 if base else 0.0,
    )  # fmt: skip
    request = GenerationRequest(prompt=PROMPT, plan=plan, steps=4, seed=3, width=64, height=64)
    assert _flags(tiny_rpg, request) == [True] * 4
    half = request.model_copy(update={"options": {"regional_steps": 0.5}})
    assert _flags(tiny_rpg, half) == [True, True, False, False]
    first = tiny_rpg.generate(half, output_type="latent").images[0]
    again = tiny_rpg.generate(half, output_type="latent").images[0]
    whole = tiny_rpg.generate(request, output_type="latent").images[0]
    torch.testing.assert_close(first, again)  # the switch starts every call regional
    assert not torch.allclose(first, whole, atol=1e-4)
    # without a base prompt, the whole prompt is packed for the plain steps to read
    conditioning = tiny_rpg.backbone.encode(
        plan, "", prompt=PROMPT, options=tiny_rpg.backbone.parse_options({"regional_steps": 0.5})
    )
    assert (conditioning.global_span is None) is base


def test_img2img_counts_the_steps_it_runs(tiny_rpg: RPG) -> None:
    from PIL import Image

    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
    request = GenerationRequest(
        prompt=PROMPT, plan=plan, steps=4, seed=3, width=64, height=64, strength=0.5,
        options={"regional_steps": 0.5},
    )  # fmt: skip
    seen = _flags(tiny_rpg, request, init_image=Image.new("RGB", (64, 64), (200, 40, 40)))
    # strength 0.5 runs 2 of the 4 steps: the first of them is regional
    assert seen == [True, False]
