"""Which diffusers classes are FLUX.2's: the transformer and its single-stream attention layer.

Both :mod:`rpg.attention.joint` (which layers are joint attention) and
:mod:`rpg.attention.joint_flux2` (FLUX.2's processors) ask these questions; they live here so that
neither module needs the other to answer them. A diffusers without FLUX.2 answers ``False``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_flux2", "is_flux2_single_stream"]


def is_flux2(model: Any) -> bool:
    """Whether ``model`` is a FLUX.2 transformer (``False`` with a diffusers without FLUX.2)."""
    try:
        from diffusers.models.transformers.transformer_flux2 import Flux2Transformer2DModel
    except ImportError:
        return False
    return isinstance(model, Flux2Transformer2DModel)


def is_flux2_single_stream(module: Any) -> bool:
    """Whether ``module`` is FLUX.2's single-stream (parallel) attention layer."""
    try:
        from diffusers.models.transformers.transformer_flux2 import Flux2ParallelSelfAttention
    except ImportError:
        return False
    return isinstance(module, Flux2ParallelSelfAttention)
