"""What the regional processor decides once, and the layers it refuses to serve."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from attention_helpers import two_by_two
from rpg.attention import RegionalAttnProcessor, RegionalConditioning, cross_attention_names
from rpg.attention import regional as regional_attention


def _attn() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=32, cross_attention_dim=32, heads=4, dim_head=8).eval()


def test_repeated_rows_are_known_from_the_conditioning_not_compared_per_call() -> None:
    cond, layout = two_by_two()
    assert cond.shared_rows
    attn = _attn()
    x = torch.randn(4, 64, 32)
    ctx = torch.randn(4, 25, 32)  # [negative ×2, positive ×2], rows that differ
    with torch.no_grad():
        shared = RegionalAttnProcessor(cond, layout, guidance=True)(attn, x, ctx)
        first_rows = torch.cat([ctx[:1], ctx[:1], ctx[2:3], ctx[2:3]])
        expected = RegionalAttnProcessor(cond, layout, guidance=True)(attn, x, first_rows)
        # the conditioning has one row per half, so each half is projected from its first row:
        # no comparison of context values (a device sync) at every call
        torch.testing.assert_close(shared, expected, rtol=0, atol=0)

        per_image = RegionalConditioning(
            prompt_embeds=torch.zeros(2, 25, 32),
            region_spans=cond.region_spans,
            base_span=cond.base_span,
            negative_span=cond.negative_span,
        )
        assert not per_image.shared_rows
        separate = RegionalAttnProcessor(per_image, layout, guidance=True)(attn, x, ctx)
    assert not torch.equal(separate, shared)


def test_value_comparison_is_gone_from_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    cond, layout = two_by_two()
    attn = _attn()
    processor = RegionalAttnProcessor(cond, layout, guidance=True)
    x, ctx = torch.randn(4, 64, 32), torch.randn(4, 25, 32)

    def no_host_sync(self: torch.Tensor) -> bool:
        raise AssertionError("the processor read a tensor's value on the host")

    with torch.no_grad():
        processor(attn, x, ctx)  # the first call builds the grid's region index, once
        monkeypatch.setattr(torch.Tensor, "__bool__", no_host_sync)
        monkeypatch.setattr(torch.Tensor, "item", no_host_sync)
        processor(attn, x, ctx)


def _with_ip_adapter(unet: Any) -> None:
    processors = {}
    for name, processor in unet.attn_processors.items():
        module = dict(unet.named_modules())[name.removesuffix(".processor")]
        if module.is_cross_attention:
            processors[name] = IPAdapterAttnProcessor2_0(
                hidden_size=module.to_q.out_features,
                cross_attention_dim=module.to_k.in_features,
                num_tokens=(4,),
            )
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)


def test_ip_adapter_layers_are_refused_with_a_clear_message(tiny_unet: Any) -> None:
    _with_ip_adapter(tiny_unet)
    before = dict(tiny_unet.attn_processors)
    cond, layout = two_by_two()
    with pytest.raises(ValueError, match="IP-Adapter"):
        cross_attention_names(tiny_unet)
    with (
        pytest.raises(ValueError, match="unload_ip_adapter"),
        regional_attention(tiny_unet, cond, layout, guidance=True),
    ):
        pass
    assert dict(tiny_unet.attn_processors) == before


def test_extra_context_tuples_are_refused_with_a_clear_message() -> None:
    cond, layout = two_by_two()
    processor = RegionalAttnProcessor(cond, layout, guidance=True)
    x, ctx = torch.randn(4, 64, 32), torch.randn(4, 25, 32)
    with pytest.raises(TypeError, match="IP-Adapter"):
        processor(_attn(), x, (ctx, [torch.randn(4, 4, 32)]))  # type: ignore[arg-type]
