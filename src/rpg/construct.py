"""Which backbone drives a model: the choices behind ``RPG.from_pretrained`` / ``from_pipeline``.

A model named by folder, file or hub id is resolved (:func:`rpg.backbones.loading.resolve_model`)
and the first registered backbone that detects it loads it; a pipeline object someone already has
goes to the registered backbone that drives its class. Backbones are asked in
:meth:`~rpg.plugins.BackboneRegistry.detection_order` (priority, then built-ins, then name), so a
third-party backbone (``rpg_register_backbones`` hook) can take a model over.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rpg.backbones.base import Backbone
from rpg.backbones.loading import ModelInfo, resolve_model
from rpg.errors import RegistryError

__all__ = ["load_backbone", "select_backbone", "wrap_pipeline"]


def select_backbone(
    info: ModelInfo, backbone: str | type[Backbone] | None = None
) -> type[Backbone]:
    """The backbone class for ``info``: the one named, or the first one that detects it.

    Backbones are asked in :meth:`~rpg.plugins.BackboneRegistry.detection_order` (priority, then
    built-ins, then name). Third-party backbones take part through the ``rpg_register_backbones``
    hook.
    """
    from rpg.plugins import backbone_registry

    registry = backbone_registry()
    if isinstance(backbone, type):
        return backbone
    if backbone is not None:
        cls: type[Backbone] = registry.get(backbone).target
        return cls
    for entry in registry.detection_order():
        if entry.target.detect(info):
            found: type[Backbone] = entry.target
            return found
    names = ", ".join(f"{e.name} ({e.description})" for e in registry) or "none"
    raise RegistryError(
        f"no registered backbone can load {info.describe()}; supported: {names}. Pass "
        "backbone=NAME to force one, or install a plugin for this architecture"
    )


def load_backbone(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device,
    dtype: str | torch.dtype,
    backbone: str | type[Backbone] | None,
    **options: Any,
) -> tuple[Backbone, str]:
    """Load ``model`` with its backbone, and the canonical name of what was loaded (what
    requests record as their ``model``); ``options`` as
    :meth:`~rpg.orchestrator.RPG.from_pretrained` takes them."""
    resolve_opts = {
        k: options.pop(k) for k in ("config", "allow_download", "cache_dir") if k in options
    }
    info = resolve_model(model, **resolve_opts)
    backbone_cls = select_backbone(info, backbone)
    if options.get("controlnet") is not None:
        from rpg.backbones.controlnet import controlnet_backbone_for

        backbone_cls = controlnet_backbone_for(backbone_cls)
    loaded = backbone_cls.load(info, device=device, dtype=dtype, **options)
    return loaded, info.canonical


def wrap_pipeline(
    pipe: Any, *, backbone: str | type[Backbone] | None, model: str | None
) -> tuple[Backbone, str | None]:
    """``pipe`` wrapped by the registered backbone that drives ``type(pipe)`` (or the one
    named), and the model name requests record: ``model``, else what the pipeline was loaded
    from, else ``None``."""
    from rpg.plugins import backbone_registry

    if backbone is None:
        matches = [
            e.target
            for e in backbone_registry().detection_order()
            if e.target.accepts_pipeline(pipe)
        ]
        if not matches:
            names = ", ".join(backbone_registry().names()) or "none"
            raise RegistryError(
                f"no registered backbone drives {type(pipe).__name__}; backbones: {names}"
            )
        backbone_cls: type[Backbone] = matches[0]
    else:
        backbone_cls = select_backbone(ModelInfo("pipeline", "folder"), backbone)
    if model is None:
        # diffusers keeps whatever from_pretrained was given: a str or a Path.
        name = getattr(getattr(pipe, "config", None), "_name_or_path", None)
        model = os.fspath(name) if name else None
    return backbone_cls.from_pipeline(pipe), model
