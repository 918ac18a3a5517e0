"""Where ControlNets come from: loading one from a name, folder, file or hub id, and the name a
request records for it.

A request records each ControlNet by the name it was given (``"tiny-controlnet"``, ``"./canny"``)
so that ``rpg generate --from`` loads the same ones again; a ControlNet passed as a model is
recorded by diffusers' ``_name_or_path``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rpg.backbones.loading import SINGLE_FILE_SUFFIXES, hf_offline
from rpg.backbones.tiny import tiny_model
from rpg.errors import ConfigurationError, ModelNotFoundError

__all__ = ["ControlNetRef", "load_controlnet", "net_name", "reference_name", "same_name"]

#: What ``controlnet=`` accepts: a reserved tiny name, a folder, a file, a cached hub id, a model.
ControlNetRef = Any


def load_controlnet(
    reference: ControlNetRef,
    *,
    dtype: torch.dtype | None = None,
    config: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Load one ``ControlNetModel`` from a reference, offline unless ``allow_download``.

    ``reference``: a ``ControlNetModel`` (returned as is), ``"tiny-controlnet"`` /
    ``"tiny-sdxl-controlnet"`` (random weights, written once into rpg's cache), a diffusers
    folder with ``config.json``, a single ``.safetensors``/``.ckpt`` file (offline it needs
    ``config=`` a diffusers ControlNet folder of the same architecture), or a hub id in the local
    Hugging Face cache.
    """
    from diffusers import ControlNetModel

    if isinstance(reference, ControlNetModel):
        model: Any = reference
        return model if dtype is None else model.to(dtype=dtype)
    if not isinstance(reference, (str, os.PathLike)):
        raise ConfigurationError(
            f"controlnet must be a name, folder, file or ControlNetModel, not "
            f"{type(reference).__name__}"
        )
    ref = os.fspath(reference).strip()
    local_only = hf_offline() or not allow_download
    common: dict[str, Any] = {"local_files_only": local_only}
    if dtype is not None:
        common["torch_dtype"] = dtype
    if cache_dir is not None:
        common["cache_dir"] = os.fspath(cache_dir)
    tiny = tiny_model(ref, "controlnet")
    path = tiny.path() if tiny is not None else Path(ref).expanduser()
    how = (
        "pass a diffusers ControlNet folder (with config.json), a .safetensors file (with "
        "config=FOLDER offline), a hub id already in the Hugging Face cache, or "
        "'tiny-controlnet' / 'tiny-sdxl-controlnet' (random weights)"
    )
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"controlnet {ref!r}: folder has no config.json; {how}")
            return ControlNetModel.from_pretrained(str(path), **common)
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelNotFoundError(f"controlnet {ref!r} is not a checkpoint file; {how}")
            if config is not None:
                common["config"] = os.fspath(config)
            return ControlNetModel.from_single_file(str(path), **common)
        if "/" in ref and not path.suffix and not ref.startswith((".", "/", "~")):
            return ControlNetModel.from_pretrained(ref, **common)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelNotFoundError):
            raise
        raise ModelNotFoundError(f"cannot load controlnet {ref!r}: {exc}; {how}") from exc
    raise ModelNotFoundError(f"controlnet {ref!r}: no such file or folder; {how}")


def net_name(net: Any) -> str:
    """Where a loaded ControlNet came from (diffusers' ``_name_or_path``), for the record."""
    name = str(getattr(getattr(net, "config", None), "_name_or_path", "") or "").strip()
    return name or f"unnamed {type(net).__name__}"


def reference_name(ref: ControlNetRef) -> str:
    """A ``controlnet=`` reference as it will be recorded: names and paths as given."""
    if isinstance(ref, (str, os.PathLike)):
        return os.fspath(ref).strip()
    return net_name(ref)


def same_name(name: str) -> str:
    """A ControlNet name normalised for comparison (``./a/b`` and ``a/b`` are the same)."""
    expanded = os.path.expanduser(name)
    return os.path.realpath(expanded) if os.path.exists(expanded) else os.path.normpath(expanded)
