"""``rpg.attention.regional``: installation, restoration, and whole-UNet behaviour."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import AttnProcessor2_0

from attention_helpers import two_by_two
from rpg.attention import (
    RegionalAttnProcessor,
    RegionalConditioning,
    RegionalLayout,
    cross_attention_names,
    regional,
)


def _single(height: int, width: int, tokens: int, total: int, guidance: bool):
    layout = RegionalLayout(rows=((1.0, (1.0,)),), base_weights=(0.0,), height=height, width=width)
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, total, 32),
        region_spans=((0, tokens),),
        negative_span=(0, tokens) if guidance else None,
    )
    return cond, layout


def test_installs_on_cross_attention_only_and_restores(tiny_unet) -> None:
    before = dict(tiny_unet.attn_processors)
    cond, layout = two_by_two(64, 64)
    cross = cross_attention_names(tiny_unet)
    assert cross and all(".attn2." in k for k in cross)
    assert len(cross) == sum(".attn2." in k for k in before)
    with regional(tiny_unet, cond, layout, guidance=True):
        inside = tiny_unet.attn_processors
        for key, proc in inside.items():
            if key in cross:
                assert isinstance(proc, RegionalAttnProcessor)
            else:
                assert proc is before[key]
        assert len({id(inside[k]) for k in cross}) == 1  # one shared processor and cache
    after = tiny_unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_restores_custom_processors_when_the_body_raises(tiny_unet) -> None:
    custom = {k: AttnProcessor2_0() for k in tiny_unet.attn_processors}
    tiny_unet.set_attn_processor(dict(custom))
    cond, layout = two_by_two(64, 64)
    with (
        pytest.raises(RuntimeError, match="boom"),
        regional(tiny_unet, cond, layout, guidance=True),
    ):
        raise RuntimeError("boom")
    assert all(tiny_unet.attn_processors[k] is v for k, v in custom.items())


def test_bad_plan_or_shape_inside_forward_still_restores(tiny_unet) -> None:
    before = dict(tiny_unet.attn_processors)
    cond, layout = two_by_two(64, 64)
    with (
        pytest.raises(ValueError, match="matches no latent grid"),
        torch.no_grad(),
        regional(tiny_unet, cond, layout, guidance=False),
    ):
        tiny_unet(torch.randn(1, 4, 6, 6), 1, torch.randn(1, 25, 32))  # 48x48, not 64x64
    assert all(tiny_unet.attn_processors[k] is v for k, v in before.items())


def test_several_models_unet_and_controlnet(tiny_unet) -> None:
    controlnet = ControlNetModel.from_unet(tiny_unet)
    saved = [dict(m.attn_processors) for m in (tiny_unet, controlnet)]
    cond, layout = two_by_two(64, 64)
    with regional([tiny_unet, controlnet], cond, layout, guidance=True):
        for m in (tiny_unet, controlnet):
            names = cross_attention_names(m)
            assert names
            assert all(isinstance(m.attn_processors[k], RegionalAttnProcessor) for k in names)
    for m, before in zip((tiny_unet, controlnet), saved, strict=True):
        assert all(m.attn_processors[k] is v for k, v in before.items())


def test_rejects_objects_without_attention_processors() -> None:
    cond, layout = two_by_two(64, 64)
    with (
        pytest.raises(TypeError, match="attn_processors"),
        regional(
            [torch.nn.Linear(2, 2)],
            cond,
            layout,
            guidance=False,  # type: ignore[list-item]
        ),
    ):
        pass


@pytest.mark.parametrize("guidance", [False, True])
def test_single_full_region_unet_equals_stock(tiny_unet, guidance: bool) -> None:
    torch.manual_seed(0)
    batch = 2 if guidance else 1
    ctx = torch.randn(batch, 77 + 6, 32)  # padding after the span must be ignored
    cond, layout = _single(72, 136, 77, 83, guidance)
    sample = torch.randn(batch, 4, 9, 17)
    with torch.no_grad():
        stock = tiny_unet(sample, 5, ctx[:, :77]).sample
        with regional(tiny_unet, cond, layout, guidance=guidance):
            ours = tiny_unet(sample, 5, ctx).sample
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(72, 136), (128, 64), (64, 128), (40, 200)])
def test_odd_and_wide_sizes_through_the_unet(tiny_unet, height: int, width: int) -> None:
    torch.manual_seed(1)
    cond, layout = two_by_two(height, width)
    sample = torch.randn(2, 4, height // 8, width // 8)
    ctx = torch.randn(2, 25, 32)
    with torch.no_grad(), regional(tiny_unet, cond, layout, guidance=True):
        out = tiny_unet(sample, 5, ctx).sample
        proc = tiny_unet.attn_processors[cross_attention_names(tiny_unet)[0]]
    assert out.shape == sample.shape and bool(torch.isfinite(out).all())
    grids = {(h, w) for h, w, _ in proc._indices}
    assert grids == {(height // 8, width // 8), (-(-height // 16), -(-width // 16))}
    # the regional layers really act: swapping two region prompts changes the output
    swapped = ctx.clone()
    swapped[:, 5:10], swapped[:, 10:15] = ctx[:, 10:15], ctx[:, 5:10]
    with torch.no_grad(), regional(tiny_unet, cond, layout, guidance=True):
        other = tiny_unet(sample, 5, swapped).sample
    assert not torch.allclose(out, other)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_unet_forward(tiny_unet, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    cond, layout = two_by_two(72, 136)
    sample, ctx = torch.randn(2, 4, 9, 17), torch.randn(2, 25, 32)
    with torch.no_grad(), regional(tiny_unet, cond, layout, guidance=True):
        ref = tiny_unet(sample, 5, ctx).sample
        low_unet = tiny_unet.to(dtype)
        low = low_unet(sample.to(dtype), 5, ctx.to(dtype)).sample
    assert low.dtype == dtype
    assert bool(torch.isfinite(low).all())
    assert (low.float() - ref).abs().mean() < 0.1 * ref.abs().mean()
