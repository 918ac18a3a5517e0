"""Registers rpg's own backbones through the same hook third-party plugins use.

The classes are registered as :class:`~rpg.plugins.LazyTarget` paths with their names and
descriptions written here, so listing them (``rpg plugins``, an unknown ``--backbone``) never
imports torch or diffusers; the class loads when a model is detected or loaded. A test checks
that each entry's name and description are the class's own.
"""

from __future__ import annotations

from rpg.hookspecs import hookimpl
from rpg.plugins import BackboneRegistry, LazyTarget

#: ``(name, "module:Class", description)`` of every built-in backbone, in registration order.
BUILTIN_BACKBONES: tuple[tuple[str, str, str], ...] = (
    (
        "sd",
        "rpg.backbones.sd:StableDiffusionBackbone",
        "Stable Diffusion 1.x / 2.x (StableDiffusionPipeline)",
    ),
    (
        "sdxl",
        "rpg.backbones.sdxl:StableDiffusionXLBackbone",
        "Stable Diffusion XL (StableDiffusionXLPipeline)",
    ),
    (
        "sd-controlnet",
        "rpg.backbones.controlnet:StableDiffusionControlNetBackbone",
        "Stable Diffusion 1.x / 2.x with ControlNet (StableDiffusionControlNetPipeline)",
    ),
    (
        "sdxl-controlnet",
        "rpg.backbones.controlnet:StableDiffusionXLControlNetBackbone",
        "Stable Diffusion XL with ControlNet (StableDiffusionXLControlNetPipeline)",
    ),
    (
        "flux",
        "rpg.backbones.flux:FluxBackbone",
        "FLUX.1 (FluxPipeline) with regional joint attention",
    ),
    (
        "sd3",
        "rpg.backbones.sd3:SD3Backbone",
        "SD3 / SD3.5 (StableDiffusion3Pipeline) with regional joint attention",
    ),
    (
        "flux2-klein",
        "rpg.backbones.flux2:Flux2KleinBackbone",
        "FLUX.2 [klein] (Flux2KleinPipeline) with regional joint attention",
    ),
)


@hookimpl(tryfirst=True)  # rpg's own names first, so a clash names the plugin
def rpg_register_backbones(registry: BackboneRegistry) -> None:
    for name, path, description in BUILTIN_BACKBONES:
        registry.register(name, LazyTarget(path), description=description)
