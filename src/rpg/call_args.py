"""The arguments of a diffusers-style call, and the pipeline arguments ``generate`` refuses.

``RPG.__call__`` takes the stock pipelines' names (``num_inference_steps``, ``generator``, ...) and
turns them into a :class:`~rpg.models.GenerationRequest` (:func:`call_request`); a generator
stands for its seed (:func:`seed_of`) so that the request repeats the render. ``RPG.generate``
passes extra keyword arguments to the stock pipeline, except those rpg sets itself from the
request or that are request fields (:func:`check_pipeline_kwargs`), which it refuses, naming the
field to use.
"""

from __future__ import annotations

from typing import Any

import torch

from rpg.errors import ConfigurationError
from rpg.models import GenerationRequest, RegionPlan, whole_image_text

__all__ = ["call_request", "check_pipeline_kwargs", "seed_of"]

#: Pipeline arguments rpg sets itself from the request (or from the plan's encoding), and what
#: to use instead when a caller passes one to ``generate``.
_RESERVED_KWARGS: dict[str, str] = {
    "prompt": "the request's prompt (GenerationRequest(prompt=...))",
    "negative_prompt": "the request's negative_prompt field",
    "prompt_2": "the request's prompt (rpg encodes each region with both encoders)",
    "negative_prompt_2": "the request's negative_prompt field",
    "prompt_embeds": "a plan (rpg encodes the plan into prompt_embeds itself)",
    "negative_prompt_embeds": "the request's negative_prompt field",
    "pooled_prompt_embeds": "a plan's base prompt (rpg pools it itself)",
    "negative_pooled_prompt_embeds": "the request's negative_prompt field",
    "height": "the request's height field",
    "width": "the request's width field",
    "num_inference_steps": "the request's steps field",
    "guidance_scale": "the request's guidance_scale field",
    "num_images_per_prompt": "the request's num_images field",
    "generator": "the request's seed field (image i is drawn with seed + i)",
    "return_dict": "the result's fields (generate always returns a GenerationResult)",
    "callback_on_step_end": "generate's callback_on_step_end argument",
    "output_type": "generate's output_type argument",
}


def check_pipeline_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse pipeline arguments that rpg sets itself or that are request fields.

    Passing one would either be silently overridden (``seed=3``) or collide with rpg's own
    argument in the pipeline call (``num_inference_steps=4``); the message names the field to use.
    """
    fields = GenerationRequest.model_fields
    wrong = sorted(k for k in kwargs if k in _RESERVED_KWARGS or k in fields)
    if not wrong:
        return
    hints = []
    for key in wrong:
        if key in _RESERVED_KWARGS:
            hints.append(f"{key}= is set by rpg from {_RESERVED_KWARGS[key]}")
        else:
            hints.append(f"{key}= is a GenerationRequest field: set it on the request")
    raise ConfigurationError(
        "generate() got pipeline argument(s) it cannot pass on: " + "; ".join(hints) + ". "
        "Or call the RPG object like a diffusers pipeline: rpg(prompt, num_inference_steps=..., "
        "seed=...)"
    )


def seed_of(generator: torch.Generator | list[torch.Generator]) -> int:
    """The seed a freshly seeded CPU generator (or list, one per image) stands for.

    rpg draws image ``i``'s noise from a new CPU generator seeded ``seed + i`` and records the
    seed, so a render can be repeated from its request. A generator can stand for its seed only
    while it has drawn nothing since ``manual_seed``, and only on the CPU; anything else is
    refused rather than silently replaced.
    """
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    if not generators:
        raise ConfigurationError("generator= is an empty list; pass seed= instead")
    seed: int | None = None
    for i, g in enumerate(generators):
        if not isinstance(g, torch.Generator) or g.device.type != "cpu":
            raise ConfigurationError(
                "generator= must be a CPU torch.Generator (rpg draws its noise on the CPU so a "
                "seed gives the same image on every device); pass seed= instead"
            )
        initial = int(g.initial_seed())
        fresh = torch.Generator().manual_seed(initial)
        if not torch.equal(fresh.get_state(), g.get_state()):
            raise ConfigurationError(
                "generator= has drawn numbers since it was seeded, so its state is not its seed "
                "and the render could not be repeated from the recorded request; pass seed= or "
                "a freshly seeded generator"
            )
        if seed is None:
            seed = initial - i
        elif initial != seed + i:
            raise ConfigurationError(
                "a list of generators must be seeded seed, seed+1, ... (rpg seeds image i with "
                "seed + i); pass seed= instead"
            )
    assert seed is not None
    if seed < 0:
        raise ConfigurationError(f"generator seeds must give a non-negative seed, got {seed}")
    return seed


def call_request(
    prompt: str | None,
    *,
    plan: RegionPlan | None,
    generator: torch.Generator | list[torch.Generator] | None,
    seed: int | None,
    **fields: Any,
) -> GenerationRequest:
    """The request a diffusers-style call stands for (see :meth:`~rpg.orchestrator.RPG.__call__`).

    ``fields`` are :class:`~rpg.models.GenerationRequest` fields by their request names;
    ``None`` keeps the request's default. Without a prompt, the plan's text is the prompt.
    """
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigurationError(
            "prompt must be one string (rpg plans one image layout per call); render several "
            "prompts one by one, or with rpg.batch / 'rpg batch'"
        )
    if prompt is None:
        if plan is None:
            raise ConfigurationError("give a prompt, a plan, or both")
        prompt = whole_image_text(plan)
    if generator is not None:
        if seed is not None:
            raise ConfigurationError(
                "give seed= or generator=, not both (a generator stands for its seed)"
            )
        seed = seed_of(generator)
    fields = {"prompt": prompt, "plan": plan, "seed": seed, **fields}
    return GenerationRequest(**{k: v for k, v in fields.items() if v is not None})
