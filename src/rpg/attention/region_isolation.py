"""Region isolation for a UNet: self-attention and GroupNorm statistics that stay in a region.

RPG makes only the *text* regional: in a UNet, every position still attends to the whole image
in self-attention, and every GroupNorm normalises with statistics of the whole image. Both are
paths by which one region's content reaches another. With ``image_attention="region"`` and
``group_norm="region"`` (:class:`rpg.backbones.options.UNetOptions`) they are cut::

    self-attention, position p in cell R_r:   out(p) = Attn(q_p, K[R_r], V[R_r])
    GroupNorm, position p in cell R_r:        y(p)   = γ · (x(p) − μ_r) / √(σ²_r + ε) + β
                                              μ_r, σ²_r over the group's channels and R_r only

Convolutions still see across an edge (a 3×3 kernel a few positions deep per level), so this is
not a separate render per region; one full-canvas region is the stock UNet. It is a different
method from RPG's, off by default; the evaluation page of the docs measures it.

Both read the region index of the cross-attention processor
(:class:`~rpg.attention.regions.RegionIndex`: one permutation that makes each region's
positions contiguous, built before the loop), so a call is a gather, one attention or one
``group_norm`` per region on a contiguous slice, and a scatter: nothing branches on tensor
values and no ``h·w × h·w`` mask is built. They need hard edges (a grid plan, or a canvas
without soft or translucent layers); :func:`check_isolatable` refuses a grid with shared
positions before the render.

The GroupNorm swap replaces the model's ``nn.GroupNorm`` submodules by :class:`RegionGroupNorm`
wrappers that hold them (their parameters are the same tensors) and puts them back afterwards;
no ``forward`` is patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from rpg.attention.processor import image_tokens
from rpg.attention.regions import RegionIndex
from rpg.errors import ConfigurationError

__all__ = [
    "RegionGroupNorm",
    "RegionIndexSource",
    "RegionSelfAttnProcessor",
    "check_isolatable",
    "region_group_norms",
]


class RegionIndexSource(Protocol):
    """What the isolation layers read the region geometry from (the cross-attention processor)."""

    @property
    def layout(self) -> Any: ...

    #: Whether this step is regional; when not, the isolation layers act as the stock ones.
    regional: bool

    def index_for(self, h: int, w: int, device: torch.device) -> RegionIndex: ...


def check_isolatable(indices: list[RegionIndex]) -> None:
    """Raise when some grid has positions shared by several painters (soft or translucent
    layers), where "its own region" has no single answer."""
    for index in indices:
        if index.soft:
            raise ConfigurationError(
                "image_attention='region' and group_norm='region' need hard region edges, but "
                f"this canvas shares positions between layers on the {index.height}x"
                f"{index.width} grid (a soft edge or a translucent mask); use boxes or hard "
                "masks, or leave both options at 'global'"
            )


def _gather(x: torch.Tensor, index: RegionIndex | None, dim: int) -> torch.Tensor:
    return x if index is None or index.perm is None else x.index_select(dim, index.perm)


def _scatter(x: torch.Tensor, index: RegionIndex | None, dim: int) -> torch.Tensor:
    return x if index is None or index.inverse is None else x.index_select(dim, index.inverse)


class RegionSelfAttnProcessor:
    """Self-attention in which every position attends only to positions of its own region.

    Installed on the self-attention layers (``attn1``) beside the regional cross-attention
    processor, whose region index it reads; one instance serves every layer.
    """

    def __init__(self, source: RegionIndexSource) -> None:
        self.source = source

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "region self-attention is for self-attention layers without a mask; it got "
                + ("a context" if encoder_hidden_states is not None else "an attention mask")
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        hidden_states, grid = image_tokens(hidden_states, self.source.layout)
        regional = self.source.regional  # past regional_steps: one region, the whole image
        index = self.source.index_for(*grid, hidden_states.device) if regional else None
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        batch, n_tokens, _ = hidden_states.shape
        hidden_states = _gather(hidden_states, index, 1)
        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        split = (batch, n_tokens, heads, -1)
        query, key, value = (t.view(split).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = query.new_empty(batch, heads, n_tokens, query.shape[-1]).transpose(1, 2)
        for start, end in index.bounds if index is not None else ((0, n_tokens),):
            if start == end:
                continue
            part = F.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
            )
            out[:, start:end].copy_(part.transpose(1, 2))
        hidden_states = out.reshape(batch, n_tokens, -1).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        hidden_states = _scatter(hidden_states, index, 1)
        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class RegionGroupNorm(torch.nn.Module):
    """A GroupNorm whose statistics come from each region's own positions.

    Wraps the model's ``norm`` (same weight, bias, groups and eps) for the duration of a render;
    an input that is not ``[B, C, H, W]`` is normalised as ``norm`` would.
    """

    def __init__(self, norm: torch.nn.GroupNorm, source: RegionIndexSource) -> None:
        super().__init__()
        self.norm = norm
        self.source = source  # a plain attribute: not a submodule, not in state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if x.ndim != 4 or not self.source.regional:  # not an image, or past regional_steps
            return norm(x)
        b, c, h, w = x.shape
        index = self.source.index_for(h, w, x.device)
        flat = _gather(x.reshape(b, c, h * w), index, 2)
        parts = [
            F.group_norm(flat[:, :, start:end], norm.num_groups, norm.weight, norm.bias, norm.eps)
            for start, end in index.bounds
            if end > start
        ]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return _scatter(out, index, 2).reshape(b, c, h, w)


@contextmanager
def region_group_norms(model: torch.nn.Module, source: RegionIndexSource) -> Iterator[int]:
    """Swap every ``nn.GroupNorm`` of ``model`` for a :class:`RegionGroupNorm` inside the block.

    The block's value is how many were swapped. The originals are put back on exit, also when
    the body raises, so the model's modules and ``state_dict`` are as they were.
    """
    swapped: list[tuple[torch.nn.Module, str, torch.nn.GroupNorm]] = []
    try:
        for parent in list(model.modules()):
            if isinstance(parent, RegionGroupNorm):  # installed already (an outer block)
                continue
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.GroupNorm):
                    setattr(parent, name, RegionGroupNorm(child, source))
                    swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
