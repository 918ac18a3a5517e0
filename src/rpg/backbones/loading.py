"""Find a model from what the user typed, and load a stock pipeline from it, without surprises.

A model reference is one of:

* ``tiny-sd`` — reserved: a tiny random-weight SD model that rpg writes once into its cache
  directory (``$RPG_CACHE_DIR`` or the platform's user cache, e.g. ``~/.cache/rpg/tiny-sd``).
* a local diffusers folder (it holds ``model_index.json``);
* a single ``.safetensors`` / ``.ckpt`` file, loaded with diffusers' ``from_single_file``. That
  needs the model's diffusers configs; offline, pass ``config=`` a local diffusers folder of the
  same architecture (or a hub id already in the cache);
* a Hugging Face hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5``, optionally at a
  revision: ``org/name@<branch, tag or commit>`` (what a request records, see
  :attr:`ModelInfo.canonical`).

**Hub ids are read from the local Hugging Face cache only** (``local_files_only=True``) unless the
caller passes ``allow_download=True``: loading a model should never start a multi-gigabyte download
as a side effect, and rpg must behave the same with and without network. ``HF_HUB_OFFLINE=1``
always wins. A model that is not there raises :class:`~rpg.errors.ModelNotFoundError` naming it
and saying how to get it or pass a local folder or file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from rpg.backbones.tiny import TINY_SD, tiny_model
from rpg.devices import resolve_device, resolve_dtype
from rpg.errors import ModelNotFoundError

__all__ = [
    "SINGLE_FILE_SUFFIXES",
    "ModelInfo",
    "hf_offline",
    "hub_file",
    "is_repo_id",
    "load_pipeline",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HOW_TO = (
    "pass a local diffusers folder (with model_index.json) or a .safetensors/.ckpt file, or use "
    f"the model name {TINY_SD!r}, which works offline (random weights, for tests and demos)"
)

ModelKind = Literal["tiny", "folder", "file", "hub"]


def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{path} does not hold a JSON object")
    return data


class _ShapeView(Mapping[str, Any]):
    """A safetensors file as a mapping key → object with ``.shape``, reading no tensor data.

    diffusers' ``infer_diffusers_model_type`` only tests keys and shapes, so this detects the
    architecture of a multi-gigabyte checkpoint in milliseconds.
    """

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._handle = safe_open(str(path), framework="pt")
        self._keys = set(self._handle.keys())

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)

        class _Shaped:
            shape = torch.Size(self._handle.get_slice(key).get_shape())

        return _Shaped()

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _refined_checkpoint_type(guess: str, checkpoint: Mapping[str, Any]) -> str:
    """diffusers' guess, with SD3 transformers of any size called ``"sd3"``.

    diffusers says ``"v1"`` for anything it does not recognise, and recognises an SD3
    transformer only at the released widths; one with SD3's tensor names and another size
    (a pruned fine-tune, ``tiny-sd3``) is still the SD3 architecture.
    """
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    if guess == "v1" and any(key in checkpoint for key in CHECKPOINT_KEY_NAMES["sd3"]):
        return "sd3"
    return guess


@dataclass(frozen=True)
class ModelInfo:
    """What a model reference points at, read without loading any weights.

    Backbones decide from this whether they can load the model (see
    :meth:`rpg.backbones.base.Backbone.detect`): ``model_index`` is the diffusers
    ``model_index.json`` (of the folder, the cached hub snapshot, or the ``config`` folder given
    for a single file), ``checkpoint_type`` is diffusers' guess for a single file (``"v1"``,
    ``"v2"``, ``"xl_base"``, ``"inpainting"``, ...).
    """

    reference: str
    kind: ModelKind
    path: Path | None = None
    model_index: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def pipeline_class_name(self) -> str | None:
        """``_class_name`` from ``model_index.json`` (e.g. ``StableDiffusionPipeline``)."""
        if self.model_index is None:
            return None
        name = self.model_index.get("_class_name")
        return str(name) if name else None

    @property
    def is_tiny(self) -> bool:
        """Whether this is a reserved random-weight model (the CLI says so).

        A reserved *trained* model (``shapes-sd``) is not: its images are pictures.
        """
        if self.kind != "tiny":
            return False
        found = tiny_model(self.reference)
        return found is None or not found.trained

    @cached_property
    def checkpoint_type(self) -> str | None:
        """For a single file: diffusers' architecture guess from its tensor names and shapes."""
        if self.kind != "file" or self.path is None:
            return None
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        checkpoint: Mapping[str, Any]
        if self.path.suffix == ".safetensors":
            checkpoint = _ShapeView(self.path)
        else:
            data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            checkpoint = data.get("state_dict", data) if isinstance(data, dict) else {}
        try:
            guess = str(infer_diffusers_model_type(checkpoint))
        except (KeyError, IndexError, AttributeError, NameError):
            return None
        return _refined_checkpoint_type(guess, checkpoint)

    @property
    def canonical(self) -> str:
        """The reference a request records: one that loads this very model again.

        A reserved tiny name as is (its weights are fixed by the name); a folder or file as its
        absolute path (a relative path would break when rendering from elsewhere); a hub id as
        ``org/name@<commit>`` of the snapshot that was read, so a later render does not pick up
        newer weights. ``resolve_model`` accepts all three.
        """
        if self.kind == "tiny" or self.path is None:
            return self.reference
        if self.kind == "hub":
            repo = self.reference.partition("@")[0]
            return f"{repo}@{self.path.name}"
        return str(self.path.resolve())

    def describe(self) -> str:
        """A short description for error messages."""
        what = self.pipeline_class_name or self.checkpoint_type or "unknown architecture"
        return f"{self.reference} ({self.kind}, {what})"


def resolve_model(
    reference: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelInfo:
    """Work out what ``reference`` is and read its configuration, loading no weights.

    ``config`` is the diffusers folder (or cached hub id) that describes a single-file
    checkpoint; ``allow_download`` lets a hub id be fetched when it is not cached (never when
    ``HF_HUB_OFFLINE`` is set); ``cache_dir`` is the Hugging Face cache to look in.
    """
    ref = os.fspath(reference).strip()
    if not ref:
        raise ModelNotFoundError(f"no model given; {_HOW_TO}")
    options: dict[str, Any] = {"allow_download": allow_download}
    if cache_dir is not None:
        options["cache_dir"] = os.fspath(cache_dir)
    tiny = tiny_model(ref, "pipeline")
    if tiny is not None:
        path = tiny.path()
        return ModelInfo(ref, "tiny", path, _read_json(path / "model_index.json"), options)

    path = Path(ref).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but not a diffusers pipeline folder (no model_index.json); "
                "pass the folder that holds model_index.json, or a single .safetensors/.ckpt file"
            )
        return ModelInfo(ref, "folder", path, _read_json(index), options)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelNotFoundError(
                f"{path} is not a checkpoint file (expected one of "
                f"{', '.join(SINGLE_FILE_SUFFIXES)}); {_HOW_TO}"
            )
        model_index = None
        if config is not None:
            options["config"] = os.fspath(config)
            config_info = resolve_model(config, allow_download=allow_download, cache_dir=cache_dir)
            model_index = config_info.model_index
            if config_info.path is not None and config_info.kind in ("folder", "tiny"):
                options["config"] = str(config_info.path)
        return ModelInfo(ref, "file", path, model_index, options)
    repo, at, revision = ref.partition("@")
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES or (os.sep in ref and not _REPO_ID.match(repo)):
        raise ModelNotFoundError(f"model {ref!r}: no such file or folder; {_HOW_TO}")
    if at and _REPO_ID.match(repo) and revision.strip():
        options["revision"] = revision.strip()
        return _resolve_hub(repo, options, reference=ref)
    if not _REPO_ID.match(ref):
        raise ModelNotFoundError(
            f"model {ref!r} is neither a local folder or file nor a hub id like 'org/name'; "
            f"{_HOW_TO}"
        )
    return _resolve_hub(ref, options)


def _resolve_hub(
    repo_id: str, options: dict[str, Any], *, reference: str | None = None
) -> ModelInfo:
    reference = reference or repo_id
    index = hub_file(
        repo_id,
        "model_index.json",
        allow_download=options["allow_download"],
        cache_dir=options.get("cache_dir"),
        revision=options.get("revision"),
        name=reference,
    )
    return ModelInfo(reference, "hub", index.parent, _read_json(index), options)


def is_repo_id(reference: str) -> bool:
    """Whether ``reference`` is spelled like a hub id (``org/name``)."""
    return bool(_REPO_ID.match(reference))


def hub_file(
    repo_id: str,
    filename: str,
    *,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    what: str = "model",
    name: str | None = None,
    how_to: str = _HOW_TO,
) -> Path:
    """The local path of ``filename`` in hub repo ``repo_id``, from the Hugging Face cache.

    Only with ``allow_download`` (and ``HF_HUB_OFFLINE`` unset) is a file that is not cached
    downloaded; otherwise :class:`ModelNotFoundError` says how to get it (``hf download``,
    ``--allow-download``), or ``how_to`` instead. No network is touched when the file is cached
    or downloads are off. ``what`` and ``name`` (default: ``repo_id``) name the thing in
    messages ("model 'org/name@rev'", "planner model 'org/name'").
    """
    from huggingface_hub import try_to_load_from_cache

    name = name or repo_id
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if allow_download and not hf_offline():
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache, revision=revision))
        except Exception as exc:  # network, auth, missing repo: all end the same way
            raise ModelNotFoundError(f"cannot download {what} {name!r}: {exc}") from None
    why = "HF_HUB_OFFLINE is set" if hf_offline() else "rpg reads hub models from the cache only"
    command = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    raise ModelNotFoundError(
        f"{what} {name!r} is not in the local Hugging Face cache ({why}); download it first "
        f"('{command}') or allow it (--allow-download, allow_download=True), or {how_to}"
    )


def _dtype_keyword() -> str:
    """``dtype`` on diffusers versions that renamed it, else the older ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def load_pipeline(
    pipeline_class: Any,
    info: ModelInfo,
    *,
    dtype: torch.dtype,
    **kwargs: Any,
) -> Any:
    """Load ``pipeline_class`` (a stock diffusers pipeline) from ``info`` with ``dtype``.

    ``kwargs`` go to ``from_pretrained`` / ``from_single_file`` (e.g. ``safety_checker=None``).
    Loading errors that mean "files not here" become :class:`ModelNotFoundError`.
    """
    local_only = hf_offline() or not info.options.get("allow_download", False)
    common: dict[str, Any] = {_dtype_keyword(): dtype, **kwargs}
    if "cache_dir" in info.options:
        common["cache_dir"] = info.options["cache_dir"]
    if info.kind == "file":
        assert info.path is not None
        config = info.options.get("config")
        if config is not None:
            common["config"] = config
        try:
            return pipeline_class.from_single_file(
                str(info.path), local_files_only=local_only, **common
            )
        except (OSError, ValueError) as exc:
            hint = (
                f"check that config={config!r} is a diffusers folder of the same architecture"
                if config is not None
                else "offline, a single file needs its configuration: pass config=FOLDER (CLI: "
                "--config FOLDER) with a local diffusers folder of the same architecture, e.g. "
                "the base model it was fine-tuned from"
            )
            raise ModelNotFoundError(f"cannot load checkpoint {info.path}: {hint} ({exc})") from exc
    if info.kind in ("tiny", "folder"):
        source = str(info.path)
    else:  # a hub id, at the revision the reference named
        source = info.reference.partition("@")[0]
        if "revision" in info.options:
            common["revision"] = info.options["revision"]
    try:
        return pipeline_class.from_pretrained(source, local_files_only=local_only, **common)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load model {info.reference!r}: {exc}; files may be missing from the "
            f"cache; {_HOW_TO}"
        ) from exc
