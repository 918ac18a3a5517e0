"""A region's own LoRA adapters on the keys and values of its own text.

A region may carry LoRA adapters of its own (``RegionalConditioning.region_loras``, see
:mod:`rpg.lora`): its keys and values are then projected with their low-rank updates added, from
its own span only, on every call (small: one prompt's tokens, low rank), while every other region
and the base term read the shared projection. The adapters are loaded but inactive, so the
stock projection leaves them out and :func:`rpg.lora.lora_delta` adds them for that span alone.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from rpg.attention.spec import Span
from rpg.lora_delta import lora_delta as _lora_delta

__all__: list[str] = []


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
