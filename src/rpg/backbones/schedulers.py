"""Schedulers by short name, built from a model's own scheduler config.

Names are what people type on the command line and what a ``GenerationRequest`` stores; each one
maps to a stock diffusers scheduler made with ``from_config(model_config, **overrides)`` so the
model's training settings (beta schedule, prediction type, timestep spacing) carry over.
Always build from the model's *original* config: configs of schedulers built here carry
overrides such as ``use_karras_sigmas`` that must not leak into the next one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from rpg.errors import ConfigurationError

__all__ = [
    "DEFAULT_SCHEDULER",
    "SCHEDULERS",
    "SchedulerChoice",
    "check_scheduler",
    "default_for_config",
    "make_scheduler",
    "scheduler_name",
]

#: The default: DPM-Solver++ 2M with Karras sigmas, a good quality/steps trade-off for SD.
DEFAULT_SCHEDULER = "dpm++2m-karras"

#: name → (diffusers class name, config overrides, one-line description).
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M Karras (default)",
    ),
    "dpm++2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
        "DPM++ 2M",
    ),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler ancestral"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    # Latent diffusion must not clip samples to [-1, 1]; the stock SD pipelines force this too.
    "ddim": ("DDIMScheduler", {"clip_sample": False}, "DDIM"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lcm": ("LCMScheduler", {}, "LCM (for LCM-distilled models or LCM-LoRA, 2-8 steps)"),
    "default": ("", {}, "the scheduler the model ships with"),
}


def default_for_config(default: str, config: Mapping[str, Any]) -> str:
    """``default``, unless the model was trained to a zero-SNR last step: then DPM++ 2M without
    Karras sigmas.

    Karras sigmas start at the schedule's largest sigma, which zero terminal SNR makes huge
    (4096 where diffusers clips it): at 12 steps half of them land on timesteps 985–999 and
    the picture gets the rest. The plain spacing (``trailing`` in such models' configs) starts
    at pure noise and spreads the steps evenly.
    """
    if default == "dpm++2m-karras" and config.get("rescale_betas_zero_snr"):
        return "dpm++2m"
    return default


def check_scheduler(name: str) -> str:
    """The canonical form of ``name``, or an error listing the known names."""
    key = name.strip().lower()
    if key not in SCHEDULERS:
        known = ", ".join(SCHEDULERS)
        raise ConfigurationError(f"unknown scheduler {name!r}; choose one of: {known}")
    return key


def make_scheduler(name: str, config: Mapping[str, Any]) -> Any:
    """A new scheduler ``name`` built from a model's original scheduler ``config``."""
    import diffusers

    key = check_scheduler(name)
    class_name, overrides, _ = SCHEDULERS[key]
    if not class_name:
        class_name = str(config.get("_class_name", ""))
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ConfigurationError(
            f"scheduler {name!r} needs diffusers.{class_name}, which this diffusers lacks"
        )
    return cls.from_config(dict(config), **overrides)


def scheduler_name(scheduler: Any) -> str:
    """The short name that rebuilds ``scheduler`` from its model's config, else ``"default"``.

    A pipeline someone hands to ``RPG.from_pipeline`` keeps the scheduler it holds; the request
    records the name of that scheduler when it is one of :data:`SCHEDULERS` (class and
    overrides match), so the PNG re-renders with it. Anything else is recorded as ``"default"``,
    the scheduler the model ships with.
    """
    config = getattr(scheduler, "config", {})
    for key, (class_name, overrides, _) in SCHEDULERS.items():
        if class_name != type(scheduler).__name__:
            continue
        if all(config.get(k) == v for k, v in overrides.items()):
            return key
    return "default"


class SchedulerChoice:
    """Which scheduler a backbone's pipeline renders with: the part of
    :class:`~rpg.backbones.base.Backbone` that names, builds and swaps schedulers.

    A mixin: ``Backbone.__init__`` sets the state it reads (the pipeline, the model's own
    scheduler config and object, the schedulers built so far).
    """

    pipe: Any
    default_scheduler: ClassVar[str]
    keeps_pipeline_scheduler: bool
    scheduler_config: dict[str, Any]
    _own_scheduler: Any
    _schedulers: dict[str, Any]

    def request_scheduler(self) -> str:
        """The scheduler name a request without one records (and renders with).

        A loaded model gets :attr:`default_scheduler`; a wrapped pipeline keeps the one it holds
        now, under its short name (see :func:`~rpg.backbones.schedulers.scheduler_name`).
        """
        if self.keeps_pipeline_scheduler:
            return scheduler_name(self.pipe.scheduler)
        return default_for_config(self.default_scheduler, self.scheduler_config)

    def scheduler_named(self, name: str) -> Any:
        """The scheduler object for ``name``: built once from the model's config and reused;
        ``"default"`` is the scheduler the pipeline came with."""
        key = check_scheduler(name)
        if key == "default":
            return self._own_scheduler
        if key not in self._schedulers:
            self._schedulers[key] = make_scheduler(key, self.scheduler_config)
        return self._schedulers[key]

    def set_scheduler(self, name: str = DEFAULT_SCHEDULER) -> None:
        """Use scheduler ``name`` (see :mod:`rpg.backbones.schedulers`) until changed again.

        Renders through ``RPG`` do not need this: they swap the request's scheduler in for the
        call and put the pipeline's back afterwards (:meth:`using_scheduler`).
        """
        self.pipe.scheduler = self.scheduler_named(name)

    @contextmanager
    def using_scheduler(self, name: str | None) -> Iterator[None]:
        """Render with scheduler ``name`` inside the block; the pipeline's scheduler is back in
        place afterwards, also on error. ``None`` leaves the pipeline's scheduler alone."""
        previous = self.pipe.scheduler
        if name is not None:
            wanted = self.scheduler_named(name)
            if self.keeps_pipeline_scheduler and scheduler_name(previous) == check_scheduler(name):
                wanted = previous  # the user's own object, with any settings of theirs
            self.pipe.scheduler = wanted
        try:
            yield
        finally:
            self.pipe.scheduler = previous

    # ----------------------------------------------------------------- encoding
