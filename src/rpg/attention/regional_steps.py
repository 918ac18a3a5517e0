"""``regional_steps`` for the UNet: regional attention for the first steps only.

After ``ceil(regional_steps · steps)`` steps every positive query reads the base prompt (or the
whole prompt, packed for it when the plan has no base prompt) and the isolation layers act as
the stock ones, so the rest of the steps follow the stock forward with that prompt: the layout
is set early, the details are drawn as one picture. The negative half of a guided batch keeps
its rules.

The steps are those the pipeline runs (in img2img, the part of the schedule that the strength
keeps). The step comes from the pipeline's own ``callback_on_step_end``
(:class:`RegionalStepSwitch`),
not from reading the timestep, and the switch is one Python flag per processor
(:attr:`~rpg.attention.RegionalAttnProcessor.regional`), written only when it changes: a
compiled UNet recompiles once, at the first step that is not regional.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpg.attention.processor import RegionalAttnProcessor

__all__ = ["ChainedStepCallback", "RegionalStepSwitch", "regional_step_count"]


def regional_step_count(fraction: float, steps: int) -> int:
    """How many of ``steps`` denoising steps are regional (at least one)."""
    return max(1, math.ceil(fraction * steps - 1e-9))


class ChainedStepCallback:
    """A ``callback_on_step_end`` that does rpg's part (:meth:`on_step_end`), then calls the
    caller's callback.

    Keeps the caller's ``tensor_inputs`` (a diffusers ``PipelineCallback``), so the pipeline
    hands over the same tensors it would have without rpg.
    """

    def __init__(self, callback: Any = None) -> None:
        self.callback = callback
        tensor_inputs = getattr(callback, "tensor_inputs", None)
        if tensor_inputs is not None:
            self.tensor_inputs = list(tensor_inputs)

    def on_step_end(self, pipe: Any, step: int) -> None:
        """What rpg does after step ``step`` (0-based) of ``pipe``."""

    def __call__(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.on_step_end(pipe, step)
        if self.callback is None:
            return {}
        result: dict[str, Any] = self.callback(pipe, step, timestep, callback_kwargs)
        return result


class RegionalStepSwitch(ChainedStepCallback):
    """A ``callback_on_step_end`` that ends the regional steps of ``processors``, then chains."""

    def __init__(
        self,
        processors: Sequence[RegionalAttnProcessor],
        fraction: float,
        steps: int,
        callback: Any = None,
    ) -> None:
        super().__init__(callback)
        for processor in processors:
            if processor.global_span is None:
                raise ValueError(
                    "regional_steps < 1 needs text for the steps that are not regional: a base "
                    "prompt, or the whole prompt packed as the conditioning's global_span"
                )
            processor.regional = True
        self.processors = list(processors)
        self.fraction = fraction
        self.steps = steps

    def on_step_end(self, pipe: Any, step: int) -> None:
        # the steps the pipeline runs (fewer than asked for in img2img), else those asked for
        steps = getattr(pipe, "num_timesteps", None) or self.steps
        regional = step + 1 < regional_step_count(self.fraction, steps)
        for processor in self.processors:
            if processor.regional != regional:  # a write compiled code would see: only on change
                processor.regional = regional
