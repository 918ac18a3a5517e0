"""Per-region LoRA on MM-DiT models: a region's adapters act on its own text tokens only.

The semantics are stated in :mod:`rpg.lora`. On FLUX.1, SD3 / SD3.5 and FLUX.2 a text token is a
row of the transformer's text stream, and every layer a text row passes through is a linear
layer applied row by row: the context stream's projections and MLP in double-stream (FLUX) and
joint (SD3) blocks, and, in single-stream blocks, the shared projections and MLP over the joint
``[text | image]`` sequence, whose first rows are the packed text. So "region ``r``'s LoRA acts
on region ``r``'s text" is exact and cheap: in each of those layers, the rows of region ``r``'s
token span get ``Σ_a s_a·B_a(A_a(x))·scaling_a`` (:func:`rpg.lora.lora_delta`) added to the
layer's own output, in the positive rows of the batch only.

Mechanism: a forward hook (``register_forward_hook``, never a replaced ``forward``) on each such
layer that holds a region adapter, registered by :func:`region_lora_hooks` for one render and
removed after, also on error. The adapters are loaded but inactive (:func:`rpg.lora.applied_loras`
switches them off), so the layer's own forward is the stock one; the hook adds the deltas. It
works the same whether the regional processor calls the layer (``add_q_proj``, ``to_q`` …) or the
block does (``ff_context``, ``proj_mlp``, ``proj_out``). Under ``torch.compile`` the hook reads
only Python facts fixed before the loop (the spans, which adapters each layer holds) and the
run state's ``rows`` that the processors read too: no tensor value, no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from rpg.errors import ConfigurationError
from rpg.lora_delta import lora_delta

if TYPE_CHECKING:
    from rpg.attention.joint_regions import JointRegions
    from rpg.attention.spec import Span

__all__ = ["region_lora_hooks", "text_stream_layers"]

#: Per text span, the ``(adapter, scale)`` pairs acting on its rows.
_SpanAdapters = tuple[tuple[int, int, tuple[tuple[str, float], ...]], ...]


def _under(module: Any) -> list[Any]:
    return [] if module is None else list(module.modules())


def text_stream_layers(transformer: Any) -> dict[int, str]:
    """``id(module) → what it is`` for every module of ``transformer`` that only ever sees text
    rows (the context stream) or the joint ``[text | image]`` rows of a single-stream block.

    Double-stream / joint blocks (``transformer_blocks``): ``attn.add_q_proj``, ``add_k_proj``,
    ``add_v_proj``, ``to_add_out`` and everything in ``ff_context``. Single-stream blocks
    (``single_transformer_blocks``): everything but the block's modulation (``norm``). Not listed,
    so global: the image stream, the modulations (``norm1_context``, adaLN), embedders
    (``time_text_embed``, ``context_embedder``, ``x_embedder``) and the model's ``proj_out``.
    Empty for a transformer without that structure.
    """
    found: dict[int, str] = {}
    for block in getattr(transformer, "transformer_blocks", None) or ():
        attn = getattr(block, "attn", None)
        if attn is None or getattr(attn, "add_k_proj", None) is None:
            continue
        for name in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            for module in _under(getattr(attn, name, None)):
                found[id(module)] = "context"
        for module in _under(getattr(block, "ff_context", None)):
            found[id(module)] = "context"
    for block in getattr(transformer, "single_transformer_blocks", None) or ():
        modulation = {id(m) for name, child in block.named_children() if name.startswith("norm")
                      for m in child.modules()}  # fmt: skip
        for module in block.modules():
            if module is not block and id(module) not in modulation:
                found[id(module)] = "joint"
    return found


def _span_adapters(regions: JointRegions) -> _SpanAdapters:
    """Each region span with its adapters, refusing a span two meanings would share."""
    adapters = regions.region_loras or ()
    by_span: dict[Span, tuple[tuple[str, float], ...]] = {}
    shared = {s for s in (regions.base_span, regions.global_span) if s is not None}
    for r, (span, pairs) in enumerate(zip(regions.region_spans, adapters, strict=True)):
        pairs = tuple(pairs)
        if span in by_span and by_span[span] != pairs:
            raise ConfigurationError(
                f"region {r} has the same prompt as an earlier region but other LoRAs; on MM-DiT "
                "models regions with the same prompt share its text tokens, so they must share "
                "their LoRAs too: give them the same LoRAs, or different prompts"
            )
        if pairs and span in shared:
            raise ConfigurationError(
                f"region {r} has LoRAs but its prompt is the base prompt's text, whose tokens "
                "every region reads; give the region a prompt of its own"
            )
        by_span[span] = pairs
    return tuple((s0, s1, pairs) for (s0, s1), pairs in by_span.items() if pairs)


@contextmanager
def region_lora_hooks(transformer: Any, regions: JointRegions) -> Iterator[int]:
    """Add each region's LoRA deltas on its text rows of every text-stream layer, for the block.

    Yields the number of layers hooked. Nothing is registered when no region has adapters.
    """
    spans = _span_adapters(regions) if regions.region_loras else ()
    if not spans:
        yield 0
        return
    fused = sorted(
        name for name, m in transformer.named_modules() if getattr(m, "fused_projections", False)
    )
    if fused:
        raise ConfigurationError(
            f"region LoRAs act through the separate text projections (add_q_proj, …), but this "
            f"transformer's projections are fused ({fused[0]}{' and more' if fused[1:] else ''}); "
            "call transformer.unfuse_qkv_projections() before rendering with region LoRAs"
        )
    allowed = text_stream_layers(transformer)
    state = regions.state
    handles = []

    def hook_for(plan: _SpanAdapters) -> Any:
        def add_deltas(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            rows = state.rows
            if rows == "negative":  # the negative prompt is every region's: no region LoRA
                return None
            x = args[0]
            start = output.shape[0] // 2 if rows == "negative+positive" else 0
            out = output.clone() if torch.is_grad_enabled() else output
            for s0, s1, adapters in plan:
                delta = lora_delta(module, x[start:, s0:s1], adapters)
                out[start:, s0:s1] += delta.to(out.dtype)
            return out

        return add_deltas

    try:
        for module in transformer.modules():
            held = getattr(module, "lora_A", None)
            if held is None or id(module) not in allowed:
                continue
            plan = tuple(
                (s0, s1, kept)
                for s0, s1, pairs in spans
                if (kept := tuple((a, s) for a, s in pairs if a in held))
            )
            if plan:
                handles.append(module.register_forward_hook(hook_for(plan)))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
