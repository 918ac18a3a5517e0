"""Registers rpg's own backbones through the same hook third-party plugins use."""

from __future__ import annotations

from rpg.hookspecs import hookimpl
from rpg.plugins import BackboneRegistry


@hookimpl(tryfirst=True)  # rpg's own names first, so a clash names the plugin
def rpg_register_backbones(registry: BackboneRegistry) -> None:
    # Imported here so that listing plugins does not pay for torch/diffusers until needed.
    from rpg.backbones.controlnet import (
        StableDiffusionControlNetBackbone,
        StableDiffusionXLControlNetBackbone,
    )
    from rpg.backbones.dit import FluxBackbone, SD3Backbone
    from rpg.backbones.flux2 import Flux2KleinBackbone
    from rpg.backbones.sd import StableDiffusionBackbone
    from rpg.backbones.sdxl import StableDiffusionXLBackbone

    for backbone in (
        StableDiffusionBackbone,
        StableDiffusionXLBackbone,
        StableDiffusionControlNetBackbone,
        StableDiffusionXLControlNetBackbone,
        FluxBackbone,
        SD3Backbone,
        Flux2KleinBackbone,
    ):
        registry.register(backbone.name, backbone, description=backbone.description)
