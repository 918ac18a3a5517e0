"""When a cross-attention layer's projected keys and values may be reused.

The text context does not change between denoising steps, so with ``cache_kv=True``
:class:`~rpg.attention.processor.RegionalAttnProcessor` projects each layer's context once per
pipeline call and reuses the keys and values at every later step. The results are the same
tensors the projection would produce again, so outputs are bit-identical; the price is the memory
of every layer's keys and values for the call.

A cached entry is right only while nothing it was made from has changed: the context tensor
(memory, shape, layout, in-place writes), the ``to_k``/``to_v`` weights and the LoRA adapters on
them with their scales. :func:`_fingerprint` collects those facts on the host, reading no tensor
values (no device synchronisation); a cached entry whose fingerprint differs is projected again.
Compiled code cannot take these checks; it reads fixed slots filled before the loop instead (see
:meth:`~rpg.attention.processor.RegionalAttnProcessor.prefill`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from rpg.attention.spec import RegionalConditioning, Span

__all__ = ["slot_projections"]

#: ``project(attn, rows, span)``: ``attn``'s keys and values of the tokens ``span`` of ``rows``.
Projection = Callable[[Attention, torch.Tensor, Span], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _Projected:
    """One layer's keys and values for one slice of one context tensor."""

    source: torch.Tensor  # held so its memory cannot be reused by a different context
    fingerprint: tuple[Any, ...]
    key: torch.Tensor
    value: torch.Tensor


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place write counter; ``None`` for inference tensors, which have none.

    Tensors made under ``torch.inference_mode()`` keep no version counter (reading it raises).
    Such a context can only be written in place inside inference mode, which a pipeline call
    does not do to its own ``prompt_embeds``; a caller who does so between the steps of one
    call must use ``cache_kv=False``.
    """
    return None if tensor.is_inference() else tensor._version


def _adapter_state(layer: Any) -> tuple[Any, ...]:
    """What a LoRA-wrapped (peft) projection adds to its base weight, as host-side facts.

    Which adapters are active, whether adapters are disabled or merged, each active adapter's
    scaling (``set_adapters`` weights, and the ``cross_attention_kwargs`` scale a UNet applies
    inside its forward) and its weights' identity and version. Plain ``nn.Linear``: empty.
    Reads no tensor values, so it costs no device synchronisation.
    """
    lora_a = getattr(layer, "lora_A", None)
    if lora_a is None:
        return ()
    active = tuple(getattr(layer, "active_adapters", ()))
    lora_b = getattr(layer, "lora_B", {})
    scaling = getattr(layer, "scaling", {})
    weights = tuple(
        (
            name,
            scaling.get(name),
            *(
                (m.weight.data_ptr(), _version(m.weight))
                for m in (lora_a[name], lora_b[name])
                if isinstance(getattr(m, "weight", None), torch.Tensor)
            ),
        )
        for name in active
        if name in lora_a and name in lora_b
    )
    return (
        active,
        bool(getattr(layer, "disable_adapters", False)),
        tuple(getattr(layer, "merged_adapters", ())),
        weights,
    )


def _fingerprint(attn: Attention, context: torch.Tensor) -> tuple[Any, ...]:
    """What must be unchanged for projected keys and values to still be right.

    The same memory, shape and layout, no in-place write since (``_version``), the same
    ``to_k``/``to_v`` weights (an in-place update such as fusing a LoRA bumps their version),
    and the same LoRA adapters on them with the same scales (:func:`_adapter_state`): switching
    adapters or changing a scale between calls re-projects.
    """
    weights = tuple(
        (w.data_ptr(), _version(w))
        for w in (getattr(attn.to_k, "weight", None), getattr(attn.to_v, "weight", None))
        if isinstance(w, torch.Tensor)
    )
    return (
        context.data_ptr(),
        tuple(context.shape),
        context.stride(),
        context.dtype,
        context.device,
        _version(context),
        weights,
        _adapter_state(attn.to_k),
        _adapter_state(attn.to_v),
    )


def slot_projections(
    attn: Attention,
    conditioning: RegionalConditioning,
    device: torch.device | str,
    project: Projection,
    *,
    negative: bool,
    negative_span: Span | None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``attn``'s keys and values of each batch half, projected now for compiled code's slots.

    ``"positive"`` always, ``"negative"`` when ``negative`` and the conditioning has a negative
    half (``negative_span``: the part of it to project; ``None``: all of it). Empty unless the
    conditioning has one row per half (:attr:`~RegionalConditioning.shared_rows`). The
    projection runs on ``attn``'s weights where they are (the CPU under model offloading; the
    execution device when they are offloaded to ``meta``, where the offloading hooks bring them
    in) and the results are kept on ``device``.
    """
    if not conditioning.shared_rows:
        return {}
    weight = getattr(attn.to_k, "weight", None)
    device = torch.device(device)
    where = weight.device if isinstance(weight, torch.Tensor) else device
    if where.type == "meta":
        where = device
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else None
    halves: dict[str, tuple[torch.Tensor, Span | None]] = {
        "positive": (conditioning.prompt_embeds, None)
    }
    if negative and conditioning.negative_prompt_embeds is not None:
        halves["negative"] = (conditioning.negative_prompt_embeds, negative_span)
    slots = {}
    with torch.no_grad():
        for kind, (embeds, span) in halves.items():
            part = embeds[:1].to(device=where, dtype=dtype)
            key, value = project(attn, part, span or (0, part.shape[1]))
            slots[kind] = (key.to(device), value.to(device))
    return slots
