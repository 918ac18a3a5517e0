"""Progress of a render: one labelled bar through plan, encode, denoise k/N and decode.

:class:`~rpg.orchestrator.RPG` reports to its ``progress`` attribute at every stage boundary and,
through the stock pipeline's ``callback_on_step_end``, after every denoising step. The default,
:class:`NoProgress`, does nothing (and leaves the pipeline's callback untouched), so library users
keep diffusers' own progress bar; the ``rpg`` command sets a :class:`BarProgress` and turns the
pipeline's bar off, so a render shows one bar, not one per stage or per library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, Protocol, runtime_checkable

__all__ = [
    "STAGES",
    "BarProgress",
    "NoProgress",
    "ProgressCallback",
    "RenderProgress",
    "step_callback",
]

#: The stages of one render, in order.
STAGES = ("plan", "encode", "denoise", "decode")


@runtime_checkable
class RenderProgress(Protocol):
    """What a render reports: its start, each stage, each finished step, its end."""

    def start(self, steps: int) -> None:
        """A render of ``steps`` denoising steps begins (ends any render still shown)."""

    def stage(self, name: str) -> None:
        """The render enters stage ``name`` (one of :data:`STAGES`)."""

    def step(self, done: int, total: int) -> None:
        """``done`` of ``total`` denoising steps are finished."""

    def finish(self) -> None:
        """The render is over (finished or failed)."""


class NoProgress:
    """Reports nothing: the default of :class:`~rpg.orchestrator.RPG`."""

    def start(self, steps: int) -> None:
        del steps

    def stage(self, name: str) -> None:
        del name

    def step(self, done: int, total: int) -> None:
        del done, total

    def finish(self) -> None:
        pass


class BarProgress:
    """One tqdm bar per render, labelled with the stage; its counter is the denoising step.

    ``file`` defaults to stderr. The bar is removed when the render finishes (``leave=False``),
    so the command's own summary line is what stays on screen.
    """

    def __init__(self, *, file: IO[str] | None = None, leave: bool = False) -> None:
        self.file = file
        self.leave = leave
        self._bar: Any = None

    def start(self, steps: int) -> None:
        from tqdm.auto import tqdm

        self.finish()
        self._bar = tqdm(
            total=steps,
            desc=STAGES[0],
            unit="step",
            file=self.file,
            leave=self.leave,
            dynamic_ncols=True,
        )

    def stage(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(name)

    def step(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if total and total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressCallback:
    """A stock ``callback_on_step_end`` that reports each finished step, then runs the caller's.

    After the last step the stage becomes ``decode`` (the pipeline decodes right after it). A
    diffusers ``PipelineCallback`` names the tensors it needs in ``tensor_inputs``; the wrapper
    carries them on, so whoever calls the pipeline can pass them as it would for the original.
    """

    def __init__(self, progress: RenderProgress, callback: Callable[..., Any] | None) -> None:
        self.progress = progress
        self.callback = callback
        tensor_inputs = getattr(callback, "tensor_inputs", None)
        if tensor_inputs is not None:
            self.tensor_inputs = list(tensor_inputs)

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        total = int(getattr(pipe, "num_timesteps", 0) or 0)
        self.progress.step(step + 1, total)
        if total and step + 1 >= total:
            self.progress.stage("decode")
        if self.callback is None:
            return tensors
        return self.callback(pipe, step, timestep, tensors)


def step_callback(
    progress: RenderProgress, callback: Callable[..., Any] | None
) -> Callable[..., Any] | None:
    """``callback`` (a stock ``callback_on_step_end`` or ``None``) wrapped to report each step.

    With :class:`NoProgress` the callback is returned as it is.
    """
    if isinstance(progress, NoProgress):
        return callback
    return ProgressCallback(progress, callback)
