"""One stock pipeline call: what goes in (:class:`StockCall`, :class:`PreparedInputs`), what
comes out (:class:`Rendered`), and the clock that splits it into denoise and decode time."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpg.models import GenerationRequest

__all__ = ["OUTPUT_TYPES", "PreparedInputs", "Rendered", "StepClock", "StockCall", "timed_call"]


@dataclass(frozen=True)
class StockCall:
    """What one stock pipeline call is made of, for :meth:`Backbone.attention_context`."""

    #: Denoising steps of the call.
    steps: int
    #: Images the call makes.
    num_images: int
    #: The family's typed options (see :meth:`Backbone.parse_options`).
    options: Any
    #: The embeddings exactly as passed to the pipeline (same tensor objects).
    inputs: Mapping[str, Any]
    #: Filled by an attention context that needs the pipeline's step (rather than reading it
    #: from a tensor): each wraps the call's ``callback_on_step_end`` and returns the wrapper.
    step_callbacks: list[Callable[[Any], Any]] = field(default_factory=list)

    def isolation(self) -> dict[str, Any]:
        """``image_attention`` / ``group_norm`` for :func:`~rpg.attention.regional` from the
        options (:class:`~rpg.backbones.options.UNetOptions`); nothing for a family whose
        options do not have them."""
        names = ("image_attention", "group_norm")
        return {name: getattr(self.options, name) for name in names if hasattr(self.options, name)}

    def switch_regional_steps(self, processors: list[Any]) -> None:
        """With ``regional_steps < 1`` in the options, end the regional steps of the UNet's
        ``processors`` from the pipeline's step callback
        (:class:`~rpg.attention.regional_steps.RegionalStepSwitch`)."""
        fraction = getattr(self.options, "regional_steps", 1.0)
        if fraction >= 1:
            return
        from rpg.attention.regional_steps import RegionalStepSwitch

        steps = self.steps
        self.step_callbacks.append(
            lambda callback: RegionalStepSwitch(processors, fraction, steps, callback)
        )


#: What :meth:`Backbone.render` (and ``RPG.generate``) can return: PIL images, float arrays in
#: [0, 1] (``[H, W, 3]`` each), tensors (``[3, H, W]`` each), or the undecoded latents.
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass(frozen=True)
class PreparedInputs:
    """What :meth:`Backbone.prepare_inputs` makes of a request's extra pipeline inputs."""

    #: The request with the inputs actually used recorded (e.g. ``controls``).
    request: GenerationRequest
    #: Keyword arguments for :meth:`Backbone.render` (and so the stock pipeline call).
    pipeline_kwargs: dict[str, Any]
    #: Images a saved PNG embeds so it re-renders without the original files (ControlNet
    #: control images, one per ``request.controls`` entry; ``None`` where not a PIL image).
    control_images: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Rendered:
    """The stock pipeline's output of one :meth:`Backbone.render` call, with its timings."""

    #: One entry per image: PIL images, ``[H, W, 3]`` arrays, ``[3, H, W]`` tensors or
    #: ``[C, h, w]`` latents, as ``output_type`` asked.
    images: list[Any]
    #: The safety checker's verdicts, when the pipeline has one (``None`` otherwise).
    nsfw_content_detected: list[bool] | None
    #: Seconds from the call to the end of the last denoising step.
    denoise_seconds: float
    #: Seconds from the end of the last step to the pipeline's return (decoding, checks).
    decode_seconds: float


class StepClock:
    """A ``callback_on_step_end`` that notes when each denoising step ended.

    Chains the caller's own callback (a function or a diffusers ``PipelineCallback`` /
    ``MultiPipelineCallbacks``), returning what it returns, so it can replace that callback
    without changing what the pipeline does.
    """

    def __init__(self, callback: Callable[..., Any] | None = None) -> None:
        self.callback = callback
        #: ``time.perf_counter()`` at the end of the last step so far (``None`` before one).
        self.last_step_end: float | None = None

    def __call__(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = (
            {} if self.callback is None else self.callback(pipe, step, timestep, callback_kwargs)
        )
        self.last_step_end = time.perf_counter()
        return result


def timed_call(pipe: Any, **call: Any) -> tuple[Any, float, float]:
    """Call a stock pipeline; return its output and the seconds spent denoising and decoding.

    ``call`` may hold the caller's ``callback_on_step_end``; it still runs, after every step.
    Decoding is what follows the last step (VAE, post-processing, safety checker). The output
    is the pipeline's ``return_dict`` output.
    """
    user = call.pop("callback_on_step_end", None)
    tensor_inputs = getattr(user, "tensor_inputs", None)
    if tensor_inputs is not None and "callback_on_step_end_tensor_inputs" not in call:
        # diffusers reads a PipelineCallback's tensor inputs off the object it is given.
        call["callback_on_step_end_tensor_inputs"] = list(tensor_inputs)
    clock = StepClock(user)
    started = time.perf_counter()
    output = pipe(**call, callback_on_step_end=clock, return_dict=True)
    ended = time.perf_counter()
    last = clock.last_step_end if clock.last_step_end is not None else ended
    return output, last - started, ended - last
