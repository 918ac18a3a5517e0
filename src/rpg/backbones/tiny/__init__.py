"""Tiny random-weight models under reserved names, written once into rpg's cache on first use.

Tests, demos and plugin authors need the *real* pipeline code path (tokenizer → text encoder →
denoiser → VAE, schedulers, callbacks) without downloading gigabytes. A reserved name such as
``tiny-sd`` resolves to a real diffusers folder that a registered *writer* produced with random
weights; ``--model tiny-sd`` then works offline. The images are noise.

Built in: ``tiny-sd``, ``tiny-sdxl`` (pipelines) and ``tiny-controlnet``,
``tiny-sdxl-controlnet`` (ControlNets). A backbone adds its own with
:func:`register_tiny_model`; writers are named as ``"module:function"`` strings and imported
only when their model is first written, so importing this package loads no model code::

    register_tiny_model("tiny-flux", "my_pkg.tiny:write_tiny_flux",
                        description="tiny FLUX architecture with random weights (64×64)")

A writer is ``writer(path, seed=0) -> Path`` and writes a complete folder at ``path`` (use
:func:`~rpg.backbones.tiny.components.staged_folder` so a crash leaves no half-written model).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rpg.errors import ModelNotFoundError, RegistryError
from rpg.paths import cache_dir

__all__ = [
    "SHAPES_SD",
    "TINY_CONTROLNET",
    "TINY_FLUX",
    "TINY_FLUX2_KLEIN",
    "TINY_SD",
    "TINY_SD3",
    "TINY_SDXL",
    "TINY_SDXL_CONTROLNET",
    "TinyKind",
    "TinyModel",
    "register_tiny_model",
    "tiny_model",
    "tiny_model_path",
    "tiny_models",
]

#: Reserved name of the tiny SD 1.x-architecture model (the default model).
TINY_SD = "tiny-sd"
#: Reserved name of the tiny SDXL-architecture model.
TINY_SDXL = "tiny-sdxl"
#: Reserved name of a tiny ControlNet for ``tiny-sd``.
TINY_CONTROLNET = "tiny-controlnet"
#: Reserved name of a tiny ControlNet for ``tiny-sdxl``.
TINY_SDXL_CONTROLNET = "tiny-sdxl-controlnet"

#: Reserved name of the small SD 1.x-architecture model *trained* on the shapes world (shipped).
SHAPES_SD = "shapes-sd"

#: Reserved name of the tiny FLUX.1-architecture model.
TINY_FLUX = "tiny-flux"
#: Reserved name of the tiny SD3.5-architecture model.
TINY_SD3 = "tiny-sd3"
#: Reserved name of the tiny FLUX.2 [klein]-architecture model.
TINY_FLUX2_KLEIN = "tiny-flux2-klein"

#: ``"pipeline"``: a whole model (``--model``); ``"controlnet"``: a ControlNet (``--controlnet``).
TinyKind = Literal["pipeline", "controlnet"]

Writer = Callable[..., Path]


@dataclass(frozen=True)
class TinyModel:
    """One reserved tiny model name and how to write it."""

    name: str
    #: ``writer(path, seed=0) -> Path``, or ``"module:function"`` naming one (imported lazily).
    writer: str | Writer
    #: One line for error messages and ``rpg plugins``.
    description: str
    kind: TinyKind = "pipeline"
    #: A folder shipped inside a package, ``"package:relative/folder"``: a *trained* model that
    #: is used where it lies (``shapes-sd``); the writer then copies it.
    shipped: str | None = None
    #: The diffusers pipeline class it writes (``model_index.json``'s ``_class_name``), so
    #: checks that run before torch is imported know its family; ``""`` when unknown.
    pipeline: str = ""

    @property
    def trained(self) -> bool:
        """Whether the weights are trained (a shipped folder), not random."""
        return self.shipped is not None

    @property
    def marker(self) -> str:
        """The file whose presence says the folder is complete."""
        return "model_index.json" if self.kind == "pipeline" else "config.json"

    def load_writer(self) -> Writer:
        """The writer function (imported now when it was registered by name)."""
        if callable(self.writer):
            return self.writer
        module, _, attr = self.writer.partition(":")
        found: Writer = getattr(importlib.import_module(module), attr)
        return found

    def write(self, path: str | os.PathLike[str], seed: int = 0) -> Path:
        """Write the model's folder at ``path`` (replacing what is there) and return it."""
        return Path(self.load_writer()(path, seed=seed))

    def path(self) -> Path:
        """Its folder in rpg's cache, written on first use and reused afterwards.

        A shipped model's folder is where the package has it, not a copy.
        """
        if self.shipped is not None:
            return shipped_folder(self.shipped)
        folder = cache_dir(self.name)
        if not (folder / self.marker).is_file():
            self.write(folder, seed=0)
        return folder


_REGISTRY: dict[str, TinyModel] = {}


def shipped_folder(spec: str) -> Path:
    """The folder ``"package:relative/folder"`` names inside an installed package."""
    from importlib.resources import files

    package, _, relative = spec.partition(":")
    folder = Path(str(files(package).joinpath(relative)))
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"the shipped model folder {relative!r} of {package!r} is missing ({folder}); "
            "reinstall the package"
        )
    return folder


def copy_shipped(path: str | os.PathLike[str], seed: int = 0, *, spec: str) -> Path:
    """Writer of a shipped model: copy its folder to ``path`` (``seed`` is ignored)."""
    import shutil

    del seed
    target = Path(path)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(shipped_folder(spec), target)
    return target


def register_tiny_model(
    name: str,
    writer: str | Writer,
    *,
    description: str,
    kind: TinyKind = "pipeline",
    replace: bool = False,
    shipped: str | None = None,
    pipeline: str = "",
) -> TinyModel:
    """Reserve ``name`` for a tiny model that ``writer`` writes (see the module docstring).

    Registering a taken name is a :class:`~rpg.errors.RegistryError` unless ``replace``.
    ``shipped`` (``"package:relative/folder"``) marks a trained model shipped in a package,
    used where it lies; only such models may have names that do not start with ``tiny-``.
    """
    if not name.startswith("tiny-") and shipped is None:
        raise RegistryError(f"tiny model names start with 'tiny-', got {name!r}")
    if name in _REGISTRY and not replace:
        raise RegistryError(f"tiny model {name!r} is already registered")
    if isinstance(writer, str) and ":" not in writer:
        raise RegistryError(f"writer {writer!r} must be a callable or 'module:function'")
    entry = TinyModel(name, writer, description, kind, shipped, pipeline)
    _REGISTRY[name] = entry
    return entry


def tiny_models(kind: TinyKind | None = None) -> dict[str, TinyModel]:
    """The registered tiny models by name (of one ``kind`` if given), in registration order."""
    return {n: m for n, m in _REGISTRY.items() if kind is None or m.kind == kind}


def tiny_model(name: str, kind: TinyKind | None = None) -> TinyModel | None:
    """The tiny model registered as ``name`` (and of ``kind`` if given), else ``None``."""
    found = _REGISTRY.get(name)
    return found if found is not None and (kind is None or found.kind == kind) else None


def tiny_model_path(name: str = TINY_SD, kind: TinyKind | None = None) -> Path:
    """The cached folder of a reserved tiny model, written on first use and reused afterwards."""
    found = tiny_model(name, kind)
    if found is None:
        known = ", ".join(tiny_models(kind)) or "none"
        raise ModelNotFoundError(f"unknown tiny model {name!r}; known: {known}")
    return found.path()


register_tiny_model(
    TINY_SD,
    "rpg.backbones.tiny.sd:write_tiny_sd",
    description="tiny Stable Diffusion 1.x architecture with random weights (64×64, offline)",
    pipeline="StableDiffusionPipeline",
)
register_tiny_model(
    TINY_SDXL,
    "rpg.backbones.tiny.sdxl:write_tiny_sdxl",
    description="tiny SDXL architecture with random weights (64×64, offline)",
    pipeline="StableDiffusionXLPipeline",
)
register_tiny_model(
    TINY_FLUX,
    "rpg.backbones.tiny.dit:write_tiny_flux",
    description="tiny FLUX.1 architecture with random weights (64×64, offline)",
    pipeline="FluxPipeline",
)
register_tiny_model(
    TINY_SD3,
    "rpg.backbones.tiny.dit:write_tiny_sd3",
    description="tiny SD3.5 architecture with random weights (64×64, offline)",
    pipeline="StableDiffusion3Pipeline",
)
register_tiny_model(
    TINY_FLUX2_KLEIN,
    "rpg.backbones.tiny.flux2:write_tiny_flux2_klein",
    description="tiny FLUX.2 [klein] architecture with random weights (64×64, offline)",
    pipeline="Flux2KleinPipeline",
)
register_tiny_model(
    TINY_CONTROLNET,
    "rpg.backbones.tiny.controlnet:write_tiny_sd_controlnet",
    description="tiny ControlNet for tiny-sd with random weights (offline)",
    kind="controlnet",
)
register_tiny_model(
    TINY_SDXL_CONTROLNET,
    "rpg.backbones.tiny.controlnet:write_tiny_sdxl_controlnet",
    description="tiny ControlNet for tiny-sdxl with random weights (offline)",
    kind="controlnet",
)

_SHAPES_SD_FOLDER = "rpg.eval:shapes_sd"
register_tiny_model(
    SHAPES_SD,
    functools.partial(copy_shipped, spec=_SHAPES_SD_FOLDER),
    description="small SD 1.x architecture trained on the shapes world (64×64, offline; "
    "see rpg.eval.shapes)",
    shipped=_SHAPES_SD_FOLDER,
    pipeline="StableDiffusionPipeline",
)
