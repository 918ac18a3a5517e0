"""Attention with its log-sum-exp, and the exact merge of partial attentions it makes possible."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rpg.attention.lse import attention_with_lse, merge_weight


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v.double(), scores.logsumexp(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_and_lse_match_the_definition(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g).to(dtype) for n in (37, 53, 53))
    out, lse = attention_with_lse(q, k, v)
    want_out, want_lse = _reference(q, k, v)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (2, 3, 37)
    assert (out.double() - want_out).abs().max().item() < tol
    assert (lse.double() - want_lse).abs().max().item() < tol


def test_partials_merge_into_attention_over_the_union() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 40, 8, generator=g)
    k, v = torch.randn(1, 2, 90, 8, generator=g), torch.randn(1, 2, 90, 8, generator=g)
    o_a, l_a = attention_with_lse(q, k[:, :, :70], v[:, :, :70])
    o_b, l_b = attention_with_lse(q, k[:, :, 70:], v[:, :, 70:])
    w = merge_weight(l_a, l_b).unsqueeze(-1)
    merged = w * o_a + (1 - w) * o_b
    whole, _ = attention_with_lse(q, k, v)
    assert (merged - whole).abs().max().item() < 1e-5
    assert (o_a - whole).abs().max().item() > 1e-3  # the parts alone differ from the union


def test_empty_key_set_weighs_nothing() -> None:
    q, k = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 8)
    out, lse = attention_with_lse(q, k[:, :, :0], k[:, :, :0])
    assert torch.isneginf(lse).all() and (out == 0).all()
    _, l_full = attention_with_lse(q, k, k)
    assert (merge_weight(l_full, lse) == 1).all()


def test_meta_device_counts_the_same_flops_as_sdpa() -> None:
    """The bench counts FLOPs on the meta device; the merged path must not hide its cost."""
    q, k, v = (torch.empty(1, 4, n, 32, device="meta") for n in (100, 300, 300))
    with FlopCounterMode(display=False) as ours:
        out, lse = attention_with_lse(q, k, v)
    with FlopCounterMode(display=False) as sdpa:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out.shape == (1, 4, 100, 32) and lse.shape == (1, 4, 100)
    assert ours.get_total_flops() == sdpa.get_total_flops() > 0
