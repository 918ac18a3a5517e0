"""The stock inpainting pipeline of a loaded model, built from the model's own modules.

``rpg edit`` repaints regions with the family's stock inpainting pipeline (SD, SDXL: their
``...InpaintPipeline``; FLUX.1: ``FluxInpaintPipeline``, or ``FluxFillPipeline`` for a fill
transformer; SD3: ``StableDiffusion3InpaintPipeline``; FLUX.2 klein:
``Flux2KleinInpaintPipeline`` where diffusers has it). The pipeline shares every module with the
loaded one (no weights are copied or cast), and the backbone wraps it like the text-to-image
pipeline, so editing renders through the same route (see :mod:`rpg.route`).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["build_inpaint_pipeline", "diffusers_class"]


def diffusers_class(name: str) -> type | None:
    """``diffusers.<name>``, or ``None`` when this diffusers has no such class."""
    if not name:
        return None
    import diffusers

    try:
        found: type | None = getattr(diffusers, name)
    except (AttributeError, ImportError):
        return None
    return found


def build_inpaint_pipeline(pipe: Any, cls: Any) -> Any:
    """A ``cls`` pipeline sharing ``pipe``'s modules (same device and dtype).

    Built with the class constructor rather than ``from_pipe``, which would also cast every
    shared module to one dtype. Settings that the constructor takes and the loaded pipeline
    has in its config (safety checker, zeros for an empty prompt, watermark, distillation) carry
    over, so the inpainting pipeline decodes and guides as the loaded one does.
    """
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in pipe.components.items() if k in accepted}
    config = pipe.config
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = components.get("safety_checker") is not None
    if "force_zeros_for_empty_prompt" in accepted:
        components["force_zeros_for_empty_prompt"] = bool(
            getattr(config, "force_zeros_for_empty_prompt", True)
        )
    if "add_watermarker" in accepted:
        # The inpainting pipeline decodes, so it watermarks exactly when the model's own does.
        components["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    if "is_distilled" in accepted:
        components["is_distilled"] = bool(config.get("is_distilled", False))
    inpaint = cls(**components)
    inpaint.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return inpaint
