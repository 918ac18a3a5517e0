"""Checks of the model-loading flags that run before torch or diffusers is imported.

A wrong ``--device``, ``--dtype``, ``--model`` file, ``--config`` folder, ControlNet flag or an
unusable ``RPG_CACHE_DIR`` used to surface after 10-20 s of imports and model loading, some as a
raw errno or a library message that named neither the flag nor the file. Each check here reads
at most a few bytes of a file and answers in well under a second, with a
:class:`~rpg.cli.checks.UsageError` (exit status 2) that names the flag.

Also the argparse value types that refuse what no model field can hold: NaN or infinite
numbers, and seeds outside what a torch generator takes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rpg.cli.checks import UsageError
from rpg.models import MAX_SEED
from rpg.paths import CACHE_ENV, cache_dir

__all__ = [
    "DEVICE_PATTERN",
    "DTYPE_NAMES",
    "check_cache_dir",
    "check_control_flags",
    "check_device_dtype",
    "check_model_flags",
    "finite_float",
    "seed_value",
]

#: ``--dtype`` names :func:`rpg.backbones.loading.resolve_dtype` accepts.
DTYPE_NAMES = ("auto", "float16", "fp16", "half", "bfloat16", "bf16", "float32", "fp32", "float")
#: ``--device`` values: what :func:`rpg.backbones.loading.resolve_device` can turn into a device.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|meta|(cuda|mps|xpu|hpu|npu|mtia)(:\d+)?)$")


def finite_float(text: str) -> float:
    """An argparse type: a float that is a number (``nan`` and ``inf`` are refused by name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text!r} is NaN (not a number); give a number")
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is infinite; give a finite number")
    return value


def seed_value(text: str) -> int:
    """An argparse type: a seed a torch generator takes, 0 to 2**64 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range; seeds go from 0 to 2**64 - 1 = {MAX_SEED}"
        )
    return value


def check_device_dtype(device: str | None, dtype: str | None) -> None:
    """``--device`` and ``--dtype`` are names rpg knows (whether CUDA exists is checked later)."""
    if device is not None and not DEVICE_PATTERN.match(device.strip().lower()):
        raise UsageError(f"--device {device}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if dtype is not None and dtype.strip().lower().removeprefix("torch.") not in DTYPE_NAMES:
        raise UsageError(f"--dtype {dtype}: unknown dtype; use auto, float16, bfloat16 or float32")


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file (reading its header only), or ``None``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"it is {size} bytes, too short for a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > 100 * 1024 * 1024:
                return "its header length is garbage (the file is damaged or not safetensors)"
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "its header is not JSON (the file is damaged or not safetensors)"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    return None


def _is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def check_model_flags(model: str, config: str | None) -> None:
    """``--model`` names a readable checkpoint and ``--config`` a diffusers folder.

    Only local paths are checked here (a hub id is looked up in the cache when it loads).
    """
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        problem = _safetensors_problem(path)
        if problem is not None:
            raise UsageError(f"--model {model}: not a usable .safetensors checkpoint: {problem}")
    if config is None:
        return
    folder = Path(config).expanduser()
    if folder.is_file():
        raise UsageError(
            f"--config {config}: is a file; --config takes the diffusers folder (with "
            "model_index.json) that describes a single-file --model"
        )
    if folder.is_dir() and not _is_model_folder(folder):
        raise UsageError(
            f"--config {config}: is not a diffusers pipeline folder (no model_index.json); "
            "--config takes the folder of a model of the same architecture as --model"
        )
    if not folder.exists() and (os.sep in config or config.startswith(".")):
        raise UsageError(f"--config {config}: no such folder")


def _loads_controlnets(model: str) -> bool | None:
    """Whether ``model`` is itself a ControlNet pipeline; ``None`` when that needs a lookup."""
    from rpg.backbones.tiny import tiny_model

    if tiny_model(model) is not None:
        return "controlnet" in model
    path = Path(model).expanduser()
    if path.is_dir() and _is_model_folder(path):
        try:
            index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return "ControlNet" in str(index.get("_class_name", ""))
    if path.is_file():
        return False
    return None  # a hub id: known once the cache is read


def check_control_flags(
    model: str,
    controlnets: Sequence[str] | None,
    images: Sequence[Any] | None,
    scales: Sequence[float] | None,
    *,
    recorded: int = 0,
) -> None:
    """``--control-image`` and ``--control-scale`` fit the ControlNets that will be loaded.

    ``controlnets`` are the ``--controlnet`` flags; ``recorded`` how many ControlNets a
    ``--from`` image recorded (used when no ``--controlnet`` replaces them).
    """
    count = len(controlnets) if controlnets else recorded
    if (images or scales) and count == 0 and _loads_controlnets(model) is False:
        given = "--control-image" if images else "--control-scale"
        raise UsageError(
            f"{given} needs --controlnet MODEL (or a ControlNet pipeline folder as --model)"
        )
    if count and images and len(images) != count:
        raise UsageError(
            f"--control-image given {_times(len(images))} for {count} ControlNet"
            f"{'s' if count != 1 else ''}; give one per --controlnet, in the same order"
        )
    if count and scales and len(scales) not in (1, count):
        raise UsageError(
            f"--control-scale given {_times(len(scales))} for {count} ControlNet"
            f"{'s' if count != 1 else ''}; give one for all, or one per --controlnet"
        )


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _writable_folder_problem(folder: Path) -> str | None:
    """Why files cannot be made in ``folder`` (made if missing), or ``None``."""
    current = folder
    while not current.exists() and current != current.parent:
        current = current.parent
    if not current.is_dir():
        return f"{current} is a file, not a folder"
    if not os.access(current, os.W_OK | os.X_OK):
        return f"no permission to write in {current}"
    try:  # os.access says yes to root, also on read-only mounts
        with tempfile.TemporaryFile(dir=current):
            pass
    except OSError as exc:
        return f"files cannot be created in {current} ({exc.strerror or exc})"
    return None


def check_cache_dir(models: Sequence[str]) -> None:
    """rpg's cache can take the tiny models among ``models`` that are not written yet.

    Tiny random-weight models are written into the cache on first use; a cache that is a file
    or read-only would otherwise fail with a raw errno after the imports.
    """
    from rpg.backbones.tiny import tiny_model

    for name in models:
        tiny = tiny_model(name)
        if tiny is None or (cache_dir(name) / tiny.marker).is_file():
            continue
        problem = _writable_folder_problem(cache_dir(name))
        if problem is not None:
            where = f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "rpg's cache folder"
            raise UsageError(
                f"{where} ({cache_dir()}) cannot hold the tiny model {name!r}: {problem}; "
                f"point {CACHE_ENV} at a writable folder"
            )
