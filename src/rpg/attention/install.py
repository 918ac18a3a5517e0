"""Install the regional processor on a model's cross-attention layers, for a ``with`` block.

The processors go in through diffusers' own ``set_attn_processor`` with a full name → processor
dict (self-attention layers get back the very object they had), and the previous processors are
put back the same way on exit, also when the body raises. No ``forward`` is patched, so
everything else diffusers does (LoRA, hooks, offloading) keeps working.

A compiled model is served as it is: ``torch.compile(unet)`` (an ``OptimizedModule``) is unwrapped
to the module it compiles, and ``unet.compile()`` or ``compile_repeated_blocks()`` change nothing
that ``set_attn_processor`` sees. Before the denoising loop, the processor's region indices are
built on the device of the conditioning (where the pipeline runs, also when offloading) and,
when a model is compiled and the key/value cache is on, every layer's keys and values are
projected into fixed slots (:meth:`RegionalAttnProcessor.prefill`); nothing in a call then needs
the host.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from rpg.attention.processor import RegionalAttnProcessor
from rpg.attention.region_isolation import (
    RegionSelfAttnProcessor,
    check_isolatable,
    region_group_norms,
)
from rpg.attention.spec import RegionalConditioning, RegionalLayout

__all__ = ["AttentionModel", "cross_attention_names", "is_compiled", "regional", "unwrap_compiled"]

_SUFFIX = ".processor"


@runtime_checkable
class AttentionModel(Protocol):
    """What ``regional`` needs from a model: diffusers' ``AttentionMixin`` interface."""

    @property
    def attn_processors(self) -> dict[str, Any]: ...

    def set_attn_processor(self, processor: Any) -> None: ...

    def named_modules(self) -> Iterator[tuple[str, Any]]: ...


def unwrap_compiled(model: Any) -> Any:
    """The module a ``torch.compile(module)`` wrapper compiles (``model`` itself otherwise).

    The wrapper's ``named_modules`` prefix every name with ``_orig_mod.`` while its
    ``attn_processors`` (forwarded to the module) do not; the module has both the same way.
    Processors set on the module are what the wrapper's compiled forward runs.
    """
    inner = getattr(model, "_orig_mod", None)
    return model if inner is None or not isinstance(model, torch.nn.Module) else inner


def is_compiled(model: Any) -> bool:
    """Whether ``model`` or one of its submodules runs compiled (any of the three forms)."""
    if getattr(model, "_orig_mod", None) is not None:  # torch.compile(model)
        return True
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    # module.compile() and diffusers' compile_repeated_blocks() set _compiled_call_impl
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in modules)


def cross_attention_names(model: AttentionModel) -> list[str]:
    """Keys of ``model.attn_processors`` that belong to cross-attention layers."""
    model = unwrap_compiled(model)
    modules = dict(model.named_modules())
    names = []
    processors = model.attn_processors
    for key, processor in processors.items():
        module = modules.get(key[: -len(_SUFFIX)]) if key.endswith(_SUFFIX) else None
        if module is None:
            raise TypeError(f"cannot find the attention module of processor {key!r}")
        if not getattr(module, "is_cross_attention", False):
            continue
        if getattr(module, "added_kv_proj_dim", None) is not None:
            raise ValueError(
                f"{key}: attention with added key/value projections is not supported by "
                "regional attention"
            )
        if hasattr(processor, "to_k_ip") or "IPAdapter" in type(processor).__name__:
            raise ValueError(
                f"{key} has an IP-Adapter attention processor ({type(processor).__name__}); "
                "regional attention would replace it and drop the image prompt; unload the "
                "IP-Adapter first (pipe.unload_ip_adapter()), or render without rpg's regions"
            )
        names.append(key)
    return names


@contextmanager
def _lora_scaled(model: Any, scale: float | None) -> Iterator[None]:
    """Multiply the active LoRA scales of ``model``'s peft layers by ``scale`` for the block, as
    a UNet's forward does with ``cross_attention_kwargs["scale"]``; the exact scales are put
    back afterwards."""
    layers = [] if scale is None or scale == 1 else list(model.modules())
    layers = [m for m in layers if hasattr(m, "scale_layer") and isinstance(m.scaling, dict)]
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            m.scale_layer(scale)
        yield
    finally:
        for m, scaling in zip(layers, saved, strict=True):
            m.scaling.update(scaling)


def _levels(model: Any) -> int:
    """How many latent resolutions ``model`` has (its block levels; 6 when it does not say)."""
    config = getattr(model, "config", None)
    channels = getattr(config, "block_out_channels", None)
    return len(channels) if channels else 6


@contextmanager
def regional(
    model: AttentionModel | Sequence[AttentionModel],
    conditioning: RegionalConditioning,
    layout: RegionalLayout,
    *,
    guidance: bool,
    cache_kv: bool = False,
    lora_scale: float | None = None,
    image_attention: Literal["global", "region"] = "global",
    group_norm: Literal["global", "region"] = "global",
) -> Iterator[RegionalAttnProcessor]:
    """Use :class:`RegionalAttnProcessor` on every cross-attention layer inside the block.

    ``model`` is a UNet, a ControlNet, any diffusers model with ``attn_processors`` and
    ``set_attn_processor``, or a list of them (all share one processor and its index cache).
    The block's value is that processor.

    ``cache_kv=True`` projects each layer's text context once and reuses the keys and values at
    every later denoising step (bit-identical output; costs their memory until the block exits,
    when the cache is freed). A changed context tensor or in-place weight update is noticed and
    re-projected, but adapter *scales* are not part of the check: keep them fixed inside one
    block, as one pipeline call does.

    Eager calls notice adapter and scale changes themselves (the cache's fingerprint includes
    the LoRA state of ``to_k``/``to_v``). For a compiled model, whose keys and values are
    projected before the loop, ``lora_scale`` is the ``cross_attention_kwargs["scale"]`` the
    pipeline call will pass: the model applies it to its LoRA layers inside its forward, so the
    slots are projected under it too.

    ``image_attention="region"`` also puts
    :class:`~rpg.attention.region_isolation.RegionSelfAttnProcessor` on every
    self-attention layer, and ``group_norm="region"`` swaps every GroupNorm for a
    :class:`~rpg.attention.region_isolation.RegionGroupNorm` (see
    :mod:`rpg.attention.region_isolation`; both need hard region edges, and both are undone on
    exit). The defaults leave self-attention and normalisation as they are: RPG's semantics.
    """
    for name, value in (("image_attention", image_attention), ("group_norm", group_norm)):
        if value not in ("global", "region"):
            raise ValueError(f"{name} must be 'global' or 'region', got {value!r}")
    models = [model] if isinstance(model, AttentionModel) else list(model)
    compiled = any(is_compiled(m) for m in models)
    models = [unwrap_compiled(m) for m in models]
    for m in models:
        if not isinstance(m, AttentionModel):
            raise TypeError(
                f"{type(m).__name__} has no attn_processors/set_attn_processor; pass a diffusers "
                "model such as a UNet2DConditionModel or ControlNetModel"
            )
    processor = RegionalAttnProcessor(conditioning, layout, guidance=guidance, cache_kv=cache_kv)
    self_processor = RegionSelfAttnProcessor(processor) if image_attention == "region" else None
    saved: list[tuple[AttentionModel, dict[str, Any]]] = []
    norms = ExitStack()
    try:
        device = conditioning.prompt_embeds.device
        # a UNet (or ControlNet) halves its grid once per block level, rounding up
        levels = max(_levels(m) for m in models)
        processor.prepare(device, levels=levels)
        if self_processor is not None or group_norm == "region":
            check_isolatable(processor.indices)
        for m in models:
            previous = dict(m.attn_processors)
            cross = set(cross_attention_names(m))
            if not cross:
                raise ValueError(f"{type(m).__name__} has no cross-attention layers")
            saved.append((m, previous))
            m.set_attn_processor(
                {k: processor if k in cross else (self_processor or v) for k, v in previous.items()}
            )
            if group_norm == "region" and isinstance(m, torch.nn.Module):
                norms.enter_context(region_group_norms(m, processor))
        if cache_kv and compiled:
            for m in models:
                named = dict(m.named_modules())
                with _lora_scaled(m, lora_scale):
                    for key in cross_attention_names(m):
                        processor.prefill(named[key[: -len(_SUFFIX)]], conditioning, device)
        yield processor
    finally:
        processor.clear_cache()
        norms.close()
        for m, previous in reversed(saved):
            m.set_attn_processor(dict(previous))
