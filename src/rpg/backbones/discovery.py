"""How a backbone is found and loaded: the registry's questions and the stock pipeline's loading.

:meth:`~BackboneLoading.detect` and :meth:`~BackboneLoading.accepts_pipeline` answer whether a
backbone drives a model (by its ``model_index.json`` class or single-file type) or a pipeline
object; :meth:`~BackboneLoading.load` resolves a model and builds the stock pipeline on a device;
:meth:`~BackboneLoading.from_pipeline` wraps a pipeline someone already has.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.backbones.loading import ModelInfo, resolve_device, resolve_dtype, resolve_model
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LOAD_OPTIONS", "BackboneLoading"]

#: Keyword options every backbone's ``load`` understands (besides device and dtype).
LOAD_OPTIONS = ("config", "allow_download", "cache_dir")


class BackboneLoading(ABC):
    """The part of :class:`~rpg.backbones.base.Backbone` that finds and loads models (a mixin;
    subclasses implement :meth:`pipeline_class` and :meth:`load_pipeline`)."""

    name: ClassVar[str]
    pipeline_class_names: ClassVar[tuple[str, ...]]
    checkpoint_types: ClassVar[tuple[str, ...]]
    keeps_pipeline_scheduler: bool

    if TYPE_CHECKING:

        def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None: ...

    @classmethod
    @abstractmethod
    def pipeline_class(cls) -> type:
        """The stock diffusers pipeline class this backbone drives."""

    @classmethod
    def detect(cls, info: ModelInfo) -> bool:
        """Whether this backbone can load the model ``info`` describes (no weights are read)."""
        if info.pipeline_class_name is not None:
            return info.pipeline_class_name in cls.pipeline_class_names
        return info.checkpoint_type in cls.checkpoint_types

    @classmethod
    def accepts_pipeline(cls, pipe: Any) -> bool:
        """Whether an existing pipeline object is one this backbone drives."""
        return type(pipe) is cls.pipeline_class()

    @classmethod
    def load(
        cls,
        source: ModelInfo | str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        **options: Any,
    ) -> Self:
        """Load the model (see :func:`rpg.backbones.loading.resolve_model`) onto ``device``.

        ``options``: ``config`` (diffusers folder describing a single-file checkpoint),
        ``allow_download`` (fetch a hub id that is not cached), ``cache_dir``; subclasses may
        accept more (e.g. ControlNet models).
        """
        unknown = sorted(set(options) - set(cls.load_options()))
        if unknown:
            raise ConfigurationError(
                f"backbone {cls.name!r} does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(cls.load_options())}"
            )
        resolve_keys = ("config", "allow_download", "cache_dir")
        resolve_opts = {k: options.pop(k) for k in resolve_keys if k in options}
        info = source if isinstance(source, ModelInfo) else resolve_model(source, **resolve_opts)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        pipe = cls.load_pipeline(info, dtype=torch_dtype, **options)
        pipe = pipe.to(torch_device)
        return cls(pipe, info=info)

    @classmethod
    def load_options(cls) -> tuple[str, ...]:
        """Names of the keyword options :meth:`load` accepts."""
        return LOAD_OPTIONS

    @classmethod
    @abstractmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        """Build the stock pipeline for ``info`` (on the CPU; :meth:`load` moves it)."""

    @classmethod
    def from_pipeline(cls, pipe: Any) -> Self:
        """Wrap a pipeline object someone already has (its device and dtype are kept)."""
        if not cls.accepts_pipeline(pipe):
            raise ConfigurationError(
                f"backbone {cls.name!r} drives {cls.pipeline_class().__name__}, "
                f"not {type(pipe).__name__}"
            )
        backbone = cls(pipe)
        backbone.keeps_pipeline_scheduler = True
        return backbone
