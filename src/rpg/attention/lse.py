"""Attention that also returns its log-sum-exp, so partial attentions can be merged exactly.

Softmax attention over a key set ``A ∪ B`` is the two partial attentions over ``A`` and over
``B`` weighted by their normalisers: with ``lse_X = log Σ_{k∈X} exp(q·k·scale)``,

    attn(A ∪ B) = σ(lse_A − lse_B) · attn(A) + σ(lse_B − lse_A) · attn(B).

The regional joint attention uses this to compute the expensive image-to-image part once and share
it between a region's own prompt and the base prompt (see :mod:`rpg.attention.joint`).

PyTorch's public ``scaled_dot_product_attention`` does not return the log-sum-exp; its fused
kernels do, through the ATen ops used here (CPU flash, CUDA flash and memory-efficient). Where
none applies (other devices, an op that refuses the shapes) an exact chunked reference is used;
on the ``meta`` device that reference is what FLOP counters see (two matmuls, as SDPA counts).
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention_with_lse", "merge_weight"]

#: Queries per chunk of the reference path, so its score matrix stays small.
_CHUNK = 1024


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    outs, lses = [], []
    for start in range(0, q.shape[-2], _CHUNK):
        scores = q[..., start : start + _CHUNK, :].float() @ k.float().transpose(-1, -2) * scale
        lse = scores.logsumexp(dim=-1)
        weights = (scores - lse.unsqueeze(-1)).exp()
        outs.append((weights @ v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


def _fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    aten = torch.ops.aten
    try:
        if q.device.type == "cpu":
            out, lse = aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, False, scale=scale
            )
            return out, lse
        if q.device.type == "cuda":
            if q.dtype in (torch.float16, torch.bfloat16):
                try:
                    flash = aten._scaled_dot_product_flash_attention(
                        q, k, v, 0.0, False, False, scale=scale
                    )
                    return flash[0], flash[1]
                except RuntimeError:
                    pass
            eff = aten._scaled_dot_product_efficient_attention(
                q, k, v, None, True, 0.0, False, scale=scale
            )
            return eff[0], eff[1][..., : q.shape[-2]]
    except (RuntimeError, NotImplementedError):
        return None
    return None


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q kᵀ · scale) v`` and its log-sum-exp, for ``[B, H, L, D]`` inputs.

    Returns ``(out, lse)``: ``out`` is ``[B, H, L, D]`` in ``q``'s dtype, ``lse`` is ``[B, H, L]``
    in float32. No gradient flows through ``lse``; callers that need one use plain attention.
    An empty key set gives zeros and ``lse = -inf`` (it then weighs nothing in a merge).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if k.shape[-2] == 0:
        out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
        return out, q.new_full(q.shape[:-1], float("-inf"), dtype=torch.float32)
    if q.device.type != "meta":
        found = _fused(q, k, v, scale)
        if found is not None:
            return found[0], found[1].float()
    return _reference(q, k, v, scale)


def merge_weight(lse_a: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """The weight of part ``A`` when attentions over disjoint key sets ``A`` and ``B`` merge."""
    return torch.sigmoid(lse_a - lse_b)
