"""The regional processor's key/value cache: same output, fewer projections, nothing stale."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attention_helpers import two_by_two
from rpg.attention import (
    RegionalAttnProcessor,
    cross_attention_names,
    regional,
)
from rpg.models import GenerationRequest, RegionPlan


def _steps(unet: Any, ctx: torch.Tensor, steps: int, *, cache_kv: bool) -> tuple[list, Any]:
    """Run the UNet ``steps`` times on one context, as a pipeline's denoising loop does."""
    cond, layout = two_by_two()
    torch.manual_seed(3)
    samples = [torch.randn(2, 4, 8, 8) for _ in range(steps)]
    with torch.no_grad(), regional(unet, cond, layout, guidance=True, cache_kv=cache_kv) as proc:
        outs = [unet(s, 10 * i, ctx).sample for i, s in enumerate(samples)]
        inside = proc.cache_bytes
    return outs, (proc, inside)


def test_cached_steps_are_bit_identical_and_project_once(tiny_unet) -> None:
    torch.manual_seed(0)
    ctx = torch.randn(2, 25, 32)
    layers = len(cross_attention_names(tiny_unet))
    plain, (plain_proc, _) = _steps(tiny_unet, ctx, 3, cache_kv=False)
    cached, (proc, held) = _steps(tiny_unet, ctx, 3, cache_kv=True)
    for a, b in zip(plain, cached, strict=True):
        assert torch.equal(a, b)
    # two projections per layer (negative span, positive rows) per step without the cache
    assert plain_proc.projections == 2 * layers * 3
    assert proc.projections == 2 * layers
    assert proc.cache_hits == 2 * layers * 2
    assert held > 0
    assert proc.cache_bytes == 0  # freed when the block exits


def test_a_new_context_inside_one_block_is_projected_again(tiny_unet) -> None:
    cond, layout = two_by_two()
    torch.manual_seed(1)
    sample = torch.randn(2, 4, 8, 8)
    first, second = torch.randn(2, 25, 32), torch.randn(2, 25, 32)
    with torch.no_grad():
        with regional(tiny_unet, cond, layout, guidance=True):
            want_first = tiny_unet(sample, 5, first).sample
            want_second = tiny_unet(sample, 5, second).sample
        with regional(tiny_unet, cond, layout, guidance=True, cache_kv=True):
            got_first = tiny_unet(sample, 5, first).sample
            got_second = tiny_unet(sample, 5, second).sample
            again_first = tiny_unet(sample, 5, first).sample
    assert torch.equal(got_first, want_first)
    assert torch.equal(got_second, want_second)
    assert torch.equal(again_first, want_first)
    assert not torch.equal(want_first, want_second)


def test_in_place_changes_to_context_or_weights_are_noticed(tiny_unet) -> None:
    cond, layout = two_by_two()
    torch.manual_seed(2)
    sample, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 25, 32)
    name = cross_attention_names(tiny_unet)[0].removesuffix(".processor")
    attn = dict(tiny_unet.named_modules())[name]
    with torch.no_grad(), regional(tiny_unet, cond, layout, guidance=True, cache_kv=True) as proc:
        tiny_unet(sample, 5, ctx)
        ctx.mul_(2.0)  # same tensor object, new contents
        changed_ctx = tiny_unet(sample, 5, ctx).sample
        attn.to_k.weight.mul_(0.5)  # e.g. a LoRA fused in place
        changed_weight = tiny_unet(sample, 5, ctx).sample
        hits = proc.cache_hits
    with torch.no_grad(), regional(tiny_unet, cond, layout, guidance=True):
        want_weight = tiny_unet(sample, 5, ctx).sample
        attn.to_k.weight.mul_(2.0)
        want_ctx = tiny_unet(sample, 5, ctx).sample
    assert torch.equal(changed_ctx, want_ctx)
    assert torch.equal(changed_weight, want_weight)
    # only the layer whose weight changed missed on the third call
    layers = len(cross_attention_names(tiny_unet))
    assert hits == 2 * (layers - 1)


def test_nothing_is_cached_while_autograd_records(tiny_unet) -> None:
    cond, layout = two_by_two()
    sample, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 25, 32)
    with regional(tiny_unet, cond, layout, guidance=True, cache_kv=True) as proc:
        for _ in range(2):
            tiny_unet(sample, 5, ctx).sample.sum().backward()
        assert proc.cache_bytes == 0
    assert proc.cache_hits == 0


def test_processor_defaults_to_no_cache() -> None:
    cond, layout = two_by_two()
    assert RegionalAttnProcessor(cond, layout, guidance=True).cache_kv is False


@pytest.mark.parametrize("scheduler", ["dpm++2m-karras", "euler-a"])
def test_backbone_cache_gives_the_same_pixels(tiny_rpg: Any, scheduler: str) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red apple", "a blue mug"], base_prompt="fruit")
    request = GenerationRequest(
        prompt="fruit", plan=plan, width=64, height=64, steps=3, seed=7, scheduler=scheduler
    )
    backbone = tiny_rpg.backbone
    unet = tiny_rpg.pipe.unet
    attn = dict(unet.named_modules())[cross_attention_names(unet)[0].removesuffix(".processor")]
    calls: list[int] = []
    hook = attn.to_k.register_forward_hook(lambda *_: calls.append(1))
    try:
        assert backbone.cache_kv is True
        cached = tiny_rpg.generate(request, output_type="np").images
        cached_calls = len(calls)
        backbone.cache_kv = False
        plain = tiny_rpg.generate(request, output_type="np").images
    finally:
        backbone.cache_kv = True
        hook.remove()
    assert (cached[0] == plain[0]).all()
    assert cached_calls == 2  # negative span and positive rows, once for all three steps
    assert len(calls) - cached_calls == 2 * 3


@pytest.mark.parametrize("cache_kv", [False, True])
def test_repeated_context_rows_are_projected_once(tiny_unet, cache_kv: bool) -> None:
    """Several images per prompt: one projection per distinct row, the same images as one."""
    cond, layout = two_by_two()
    torch.manual_seed(4)
    negative, positive = torch.randn(1, 25, 32), torch.randn(1, 25, 32)
    samples = torch.randn(2, 4, 8, 8)
    name = cross_attention_names(tiny_unet)[0].removesuffix(".processor")
    attn = dict(tiny_unet.named_modules())[name]
    batches: list[int] = []
    hook = attn.to_k.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    try:
        with torch.no_grad(), regional(tiny_unet, cond, layout, guidance=True, cache_kv=cache_kv):
            ctx = torch.cat([negative.expand(2, -1, -1), positive.expand(2, -1, -1)]).clone()
            both = tiny_unet(samples.repeat(2, 1, 1, 1), 5, ctx).sample  # [s0, s1, s0, s1]
            seen = list(batches)
            singles = [
                tiny_unet(
                    torch.cat([samples[i : i + 1]] * 2), 5, torch.cat([negative, positive])
                ).sample
                for i in range(2)
            ]
    finally:
        hook.remove()
    assert seen == [1, 1]  # the negative and the positive half, one row each
    for i in range(2):
        # 1e-5: a batch of 4 and a batch of 2 may take different matmul kernels
        torch.testing.assert_close(both[i], singles[i][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[2 + i], singles[i][1], atol=1e-5, rtol=1e-5)
