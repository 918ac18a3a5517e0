"""Regional joint attention for FLUX.2 (``Flux2Transformer2DModel``, e.g. FLUX.2 [klein]).

The same semantics and the same arithmetic as FLUX.1 (:mod:`rpg.attention.joint`): text and image
are one sequence ``[text | image]``, split into text and image queries, keys and values after the
stock projections, QK norms and RoPE, then :meth:`~rpg.attention.joint_core._JointAttention.attend`
does the regional part. Only the projections differ from FLUX.1:

* double-stream blocks (``Flux2Attention``) project text and image separately, exactly as FLUX.1's
  double-stream blocks do, so :class:`Flux2RegionalAttnProcessor` is FLUX.1's processor;
* single-stream blocks (``Flux2ParallelSelfAttention``) run one linear layer for Q, K, V *and* the
  MLP input, and one output layer over ``[attention | MLP]``:
  :class:`Flux2SingleRegionalAttnProcessor` splits them as the stock processor does and replaces
  only the attention in the middle.

FLUX.2's RoPE has four axes (time, height, width, text position). The stock pipeline numbers the
text tokens ``0 … T−1``; with packed text :func:`regional_flux2` renumbers each prompt's tokens
from 0, as if that prompt were alone, so a region prompt sits at the same rotary distance from
every image token as in a stock render of that prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from rpg.attention.flux2_layers import is_flux2, is_flux2_single_stream
from rpg.attention.joint import FluxRegionalAttnProcessor, JointRegions, regional_joint
from rpg.attention.joint_core import _JointAttention
from rpg.attention.joint_processors import _rope
from rpg.attention.spec import Span

__all__ = [
    "Flux2RegionalAttnProcessor",
    "Flux2SingleRegionalAttnProcessor",
    "flux2_processor_classes",
    "is_flux2",
    "is_flux2_single_stream",
    "packed_text_ids",
    "regional_flux2",
]


class Flux2RegionalAttnProcessor(FluxRegionalAttnProcessor):
    """Regional joint attention for FLUX.2's double-stream blocks (``Flux2Attention``).

    Their projections (fused or not), per-head RMS norms, ``[text | image]`` order, RoPE and
    output layers are FLUX.1's, so this is :class:`~rpg.attention.joint.FluxRegionalAttnProcessor`
    under FLUX.2's name.
    """


class Flux2SingleRegionalAttnProcessor(_JointAttention):
    """Regional joint attention for FLUX.2's single-stream blocks (``Flux2ParallelSelfAttention``).

    Mirrors the stock ``Flux2ParallelSelfAttnProcessor``: one projection gives Q, K, V and the MLP
    input (split by their global ratio), Q and K get their RMS norms and RoPE, and one output
    layer reads ``[attention | SwiGLU(MLP input)]``. The attention between is regional; the joint
    sequence's text length is the packed length (``JointRegions.text_length``).
    """

    def __init__(self, regions: JointRegions, *, regional_block: bool = True) -> None:
        super().__init__(regions, regional_block=regional_block, image_first=False)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("regional joint attention does not take an attention_mask")
        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = projected.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp = projected.split([local_qkv, projected.shape[-1] - local_qkv], dim=-1)
        heads = (-1, attn.head_dim)
        q, k, v = (x.unflatten(-1, heads) for x in qkv.chunk(3, dim=-1))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:
            q, k = _rope(q, image_rotary_emb), _rope(k, image_rotary_emb)
        n_text = self.regions.text_length or 0
        if not 0 < n_text < q.shape[1]:
            raise ValueError(
                "a single-stream block needs the packed text length (JointRegions.text_length)"
            )
        out_t, out_i = self.attend(
            q[:, :n_text], k[:, :n_text], v[:, :n_text], q[:, n_text:], k[:, n_text:], v[:, n_text:]
        )
        out = torch.cat([out_t, out_i], dim=1).flatten(2, 3).to(q.dtype)
        out = torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1)
        result: torch.Tensor = attn.to_out(out)
        return result


def flux2_processor_classes(model: Any, names: Sequence[str]) -> list[type[_JointAttention]]:
    """The regional processor class of each joint layer ``names`` of a FLUX.2 ``model``."""
    modules = dict(model.named_modules())
    return [
        Flux2SingleRegionalAttnProcessor
        if is_flux2_single_stream(modules.get(key.removesuffix(".processor")))
        else Flux2RegionalAttnProcessor
        for key in names
    ]


def packed_text_ids(
    length: int,
    spans: Sequence[Span],
    *,
    like: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``[length, 4]`` FLUX.2 text ids with each span's tokens numbered from 0.

    Positions outside every span (padding nobody reads) keep the stock numbering. The ids are
    made where ``like`` is (or on ``device``), with its dtype: nothing is built on the host and
    copied over.
    """
    if like is not None:
        device, dtype = like.device, like.dtype
    ids = torch.zeros(length, 4, dtype=dtype or torch.long, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    for s0, s1 in sorted(set(spans)):
        ids[s0:s1, 3] = torch.arange(s1 - s0, device=device)
    return ids


@contextmanager
def regional_flux2(
    transformer: Any,
    regions: JointRegions,
    *,
    negative_prompt_embeds: torch.Tensor | None = None,
) -> Iterator[list[_JointAttention]]:
    """:func:`~rpg.attention.joint.regional_joint` for a ``Flux2Transformer2DModel``.

    Installs :class:`Flux2RegionalAttnProcessor` and :class:`Flux2SingleRegionalAttnProcessor`
    (restored on exit, also on error) and adds a forward pre-hook that

    * knows the negative forward of klein's CFG by the order of calls: with
      ``negative_prompt_embeds`` given, forwards alternate positive, negative, as the klein
      pipeline runs them in every step (its negative forward gets a copy of the embeddings, so
      identity cannot tell, and comparing values would wait on the device at every call);
    * gives every positive call the packed text ids of :func:`packed_text_ids`, made once on
      the device of the pipeline's own ids and reused at every step.
    """
    from rpg.attention.install import unwrap_compiled

    transformer = unwrap_compiled(transformer)
    if not is_flux2(transformer):
        raise TypeError(f"regional_flux2 needs a Flux2Transformer2DModel, got {type(transformer)}")
    spans = [s for s in (regions.base_span, regions.global_span) if s is not None]
    spans += list(regions.region_spans)
    state = regions.state
    made: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
    if regions.text_length is not None and regions.device is not None:
        # Made before the loop, so compiled code reads them and builds nothing.
        ids = packed_text_ids(regions.text_length, spans, device=regions.device)
        made[(regions.text_length, ids.device, ids.dtype)] = ids

    def text_ids(length: int, like: torch.Tensor) -> torch.Tensor:
        key = (length, like.device, like.dtype)
        found = made.get(key)
        if found is None:
            found = packed_text_ids(length, spans, like=like)
            if not torch.compiler.is_compiling():
                made[key] = found
        return found

    def before(module: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        del module
        context = kwargs.get("encoder_hidden_states")
        if context is None and len(args) > 1:
            context = args[1]
        if negative_prompt_embeds is not None:
            # A flag that flips per call: compiled code sees two values, so two graphs at most.
            negative = state.negative_next
            state.negative_next = not negative
            if negative:
                state.rows = "negative"
                return None
        ids = kwargs.get("txt_ids")
        if isinstance(context, torch.Tensor) and isinstance(ids, torch.Tensor):
            kwargs["txt_ids"] = text_ids(int(context.shape[1]), ids)
            return args, kwargs
        return None

    with regional_joint(
        transformer, regions, processor_classes=flux2_processor_classes
    ) as processors:
        # Runs after regional_joint's own pre-hook, which has set the step and "positive" rows.
        handle = transformer.register_forward_pre_hook(before, with_kwargs=True)
        try:
            yield processors
        finally:
            handle.remove()
