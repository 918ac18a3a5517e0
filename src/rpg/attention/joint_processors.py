"""The regional joint-attention processors of FLUX.1 and SD3 / SD3.5.

Each mirrors its stock diffusers processor's projections (fused or not), QK norms and RoPE,
hands the text and image queries, keys and values to the shared arithmetic
(:meth:`rpg.attention.joint_core._JointAttention.attend`) and runs the stock output layers on the
result. FLUX.2's are in :mod:`rpg.attention.joint_flux2`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

from rpg.attention.joint_core import _cat, _JointAttention
from rpg.attention.joint_regions import JointRegions

__all__ = ["FluxRegionalAttnProcessor", "SD3RegionalAttnProcessor"]

_Projections = tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
]


def _projections(
    attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
) -> _Projections:
    """q, k, v of the image stream and (or ``None``) of the text stream, fused or not."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        if encoder_hidden_states is None:
            return q, k, v, None, None, None
        eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        return q, k, v, eq, ek, ev
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    if encoder_hidden_states is None:
        return q, k, v, None, None, None
    eq = attn.add_q_proj(encoder_hidden_states)
    ek = attn.add_k_proj(encoder_hidden_states)
    ev = attn.add_v_proj(encoder_hidden_states)
    return q, k, v, eq, ek, ev


def _rope(x: torch.Tensor, freqs: Any) -> torch.Tensor:
    # diffusers annotates a tuple, but with use_real it returns one tensor
    out: torch.Tensor = apply_rotary_emb(x, freqs, sequence_dim=1)  # type: ignore[assignment]
    return out


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


class FluxRegionalAttnProcessor(_JointAttention):
    """Regional joint attention for FLUX.1's double-stream and single-stream blocks.

    Mirrors the stock ``FluxAttnProcessor``'s projections (fused or not), RMS norms and RoPE
    (text ids are part of the rotary table), then attends regionally. In a single-stream block
    the hidden states are the joint ``[text | image]`` sequence; its text length is the packed
    length.
    """

    def __init__(self, regions: JointRegions, *, regional_block: bool = True) -> None:
        super().__init__(regions, regional_block=regional_block, image_first=False)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        if attention_mask is not None:
            raise ValueError("regional joint attention does not take an attention_mask")
        q, k, v, eq, ek, ev = _projections(attn, hidden_states, encoder_hidden_states)
        heads = (-1, attn.head_dim)
        q, k, v = attn.norm_q(q.unflatten(-1, heads)), attn.norm_k(k.unflatten(-1, heads)), v
        v = v.unflatten(-1, heads)
        if eq is not None and ek is not None and ev is not None:
            eq = attn.norm_added_q(eq.unflatten(-1, heads))
            ek = attn.norm_added_k(ek.unflatten(-1, heads))
            q, k, v = _cat(eq, q), _cat(ek, k), _cat(ev.unflatten(-1, heads), v)
            n_text = eq.shape[1]
        else:
            n_text = self.regions.text_length or 0
            if not 0 < n_text < q.shape[1]:
                raise ValueError(
                    "a single-stream block needs the packed text length (JointRegions.text_length)"
                )
        if image_rotary_emb is not None:
            q = _rope(q, image_rotary_emb)
            k = _rope(k, image_rotary_emb)
        out_t, out_i = self.attend(
            q[:, :n_text], k[:, :n_text], v[:, :n_text], q[:, n_text:], k[:, n_text:], v[:, n_text:]
        )
        out_t, out_i = out_t.flatten(2, 3).to(q.dtype), out_i.flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return _cat(out_t, out_i)
        image = attn.to_out[1](attn.to_out[0](out_i.contiguous()))
        return image, attn.to_add_out(out_t.contiguous())


class SD3RegionalAttnProcessor(_JointAttention):
    """Regional joint attention for SD3 / SD3.5 joint blocks (sequence order ``[image | text]``).

    Mirrors the stock ``JointAttnProcessor2_0`` (and its fused variant): optional QK norms (SD3.5),
    and no ``to_add_out`` in the ``context_pre_only`` last block. SD3.5's image-only ``attn2``
    layers are not joint and keep their stock processor.
    """

    def __init__(self, regions: JointRegions, *, regional_block: bool = True) -> None:
        super().__init__(regions, regional_block=regional_block, image_first=True)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is None:
            raise ValueError("SD3RegionalAttnProcessor is for joint blocks (text and image)")
        if attention_mask is not None:
            raise ValueError("regional joint attention does not take an attention_mask")
        q, k, v, eq, ek, ev = _projections(attn, hidden_states, encoder_hidden_states)
        assert eq is not None and ek is not None and ev is not None
        heads = (attn.heads, -1)
        q = _norm(attn.norm_q, q.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        k = _norm(attn.norm_k, k.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        eq = _norm(attn.norm_added_q, eq.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        ek = _norm(attn.norm_added_k, ek.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        out_t, out_i = self.attend(eq, ek, ev.unflatten(-1, heads), q, k, v.unflatten(-1, heads))
        out_t, out_i = out_t.flatten(2, 3).to(q.dtype), out_i.flatten(2, 3).to(q.dtype)
        if not attn.context_pre_only:
            out_t = attn.to_add_out(out_t)
        return attn.to_out[1](attn.to_out[0](out_i)), out_t
