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
    "LineProgress",
    "NoProgress",
    "ProgressCallback",
    "RenderProgress",
    "close_bars",
    "progress_for",
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


#: Bars on screen now, so that an error can clear them before it prints (see :func:`close_bars`).
_OPEN_BARS: list[BarProgress] = []

# Until the denoising starts there is no step to count: the bar shows just the stage.
_STAGE_ONLY = "{desc}…"


class BarProgress:
    """One tqdm bar per render, labelled with the stage; it counts steps only while denoising.

    ``plan`` and ``encode`` show only their name ("plan…", not "plan 0/30 step/s"); ``denoise``
    shows the steps done, their rate and the time left; ``decode`` its name and the steps. The
    bar is for a terminal (``file`` defaults to stderr); use :class:`LineProgress` for logs.
    It is removed when the render finishes (``leave=False``), so the command's own summary
    line is what stays on screen.
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
            bar_format=_STAGE_ONLY,
        )
        _OPEN_BARS.append(self)

    def stage(self, name: str) -> None:
        if self._bar is None:
            return
        if name == "denoise":
            self._bar.bar_format = None  # tqdm's own: steps, rate, time left
        elif name == "decode":
            self._bar.bar_format = "{desc}… ({n_fmt}/{total_fmt} steps done)"
        else:
            self._bar.bar_format = _STAGE_ONLY
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
        if self in _OPEN_BARS:
            _OPEN_BARS.remove(self)


class LineProgress:
    """Progress for logs (stderr is not a terminal): a few whole lines, no bar frames.

    One line per stage, and during the denoising one at each quarter of the steps:
    ``denoise: 15/30 steps (4.1 s)``.
    """

    def __init__(self, *, file: IO[str] | None = None, label: str = "") -> None:
        self.file = file
        self.label = label
        self._steps = 0
        self._reported = 0
        self._started = 0.0

    def _print(self, text: str) -> None:
        import sys

        print(f"{self.label}{text}", file=self.file or sys.stderr, flush=True)

    def start(self, steps: int) -> None:
        import time

        self._steps, self._reported, self._started = steps, 0, time.perf_counter()

    def stage(self, name: str) -> None:
        if name == "denoise":
            self._print(f"denoise: {self._steps} steps")
        elif name != "decode" or self._reported < self._steps:
            self._print(f"{name}…")

    def step(self, done: int, total: int) -> None:
        import time

        total = self._steps = total or self._steps
        quarter = max(1, -(-total // 4))
        if done == total or done - self._reported >= quarter:
            self._reported = done
            seconds = time.perf_counter() - self._started
            self._print(f"denoise: {done}/{total} steps ({seconds:.1f} s)")
            if done == total:
                self._print("decode…")

    def finish(self) -> None:
        pass


def progress_for(stream: IO[str] | None = None) -> RenderProgress:
    """A bar when ``stream`` (default stderr) is a terminal, else a few plain lines."""
    import sys

    target = stream or sys.stderr
    isatty = getattr(target, "isatty", None)
    if callable(isatty) and isatty():
        return BarProgress(file=stream)
    return LineProgress(file=stream)


def close_bars() -> None:
    """Close every bar still on screen, so that the next line (an error) starts on its own."""
    for bar in list(_OPEN_BARS):
        bar.finish()


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
