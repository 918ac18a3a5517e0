"""The low-rank update of a region's own LoRA adapters, applied by hand on its own rows.

A leaf module (no torch import at load, no rpg import) so that the UNet processor's region LoRA
(:mod:`rpg.attention.region_lora`), the MM-DiT text-stream hooks (:mod:`rpg.attention.joint_lora`)
and the adapter checks (:mod:`rpg.lora_adapters`) share one definition without importing each
other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lora_delta"]


def lora_delta(layer: Any, x: Any, adapters: tuple[tuple[str, float], ...]) -> Any:
    """``Σ_a s_a · B_a(A_a(x)) · scaling_a`` of ``layer``'s (inactive) LoRA adapters, or ``None``.

    The low-rank update a peft LoRA layer adds to its base output, computed for the named
    adapters only whether or not they are active: how a region's own LoRA reaches its own text
    (UNet: its keys and values; MM-DiT: its text rows). Adapters the layer does not hold add
    nothing.
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
