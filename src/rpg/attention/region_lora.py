"""A region's own LoRA adapters on the keys and values of its own text.

A region may carry LoRA adapters of its own (``RegionalConditioning.region_loras``, see
:mod:`rpg.lora`): its keys and values are then projected with their low-rank updates added, from
its own span only, on every call (small: one prompt's tokens, low rank), while every other region
and the base term read the shared projection. The adapters are loaded but inactive, so the
stock projection leaves them out and :func:`_lora_delta` adds them for that span alone.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from rpg.attention.spec import Span

__all__: list[str] = []


def _lora_delta(layer: Any, x: torch.Tensor, adapters: tuple[tuple[str, float], ...]) -> Any:
    """``Σ_a s_a · B_a(A_a(x)) · scaling_a`` of ``layer``'s (inactive) LoRA adapters, or ``None``.

    The low-rank update a peft LoRA layer adds to its base output, computed for the named
    adapters only whether or not they are active: how a region's own LoRA reaches its tokens'
    keys and values (:mod:`rpg.lora`). Adapters the layer does not hold add nothing.
    """
    lora_a = getattr(layer, "lora_A", None)
    if lora_a is None:
        return None
    delta = None
    for name, scale in adapters:
        if name not in lora_a:
            continue
        down = lora_a[name]
        part = layer.lora_dropout[name](x.to(down.weight.dtype))
        term = layer.lora_B[name](down(part)) * (layer.scaling[name] * scale)
        delta = term if delta is None else delta + term
    return None if delta is None else delta.to(x.dtype)


def lora_projection(
    attn: Attention, part: torch.Tensor, span: Span, adapters: tuple[tuple[str, float], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn``'s keys and values (``[B, T, H·d]``, before splitting heads) of the tokens
    ``span`` of the context rows ``part``, with ``adapters`` added to both projections."""
    if attn.norm_cross:
        part = attn.norm_encoder_hidden_states(part)
    part = part[:, span[0] : span[1]]
    projected = []
    for layer in (attn.to_k, attn.to_v):
        y = layer(part)
        delta = _lora_delta(layer, part, adapters)
        projected.append(y if delta is None else y + delta)
    key, value = projected
    return key, value
