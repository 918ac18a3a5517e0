"""Registers rpg's own backbones through the same hook third-party plugins use."""

from __future__ import annotations

from rpg.hookspecs import hookimpl
from rpg.plugins import BackboneRegistry


@hookimpl
def rpg_register_backbones(registry: BackboneRegistry) -> None:
    # Imported here so that listing plugins does not pay for torch/diffusers until needed.
    from rpg.backbones.sd import StableDiffusionBackbone

    registry.register(
        StableDiffusionBackbone.name,
        StableDiffusionBackbone,
        description=StableDiffusionBackbone.description,
    )
