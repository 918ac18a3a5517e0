"""Checks the commands run before any model loads: flags, output paths, planners, image size.

A wrong flag, an output path that cannot be written or a planner that cannot work should cost
well under a second, not a model load and a render. Nothing here imports torch or diffusers at
module level; :func:`warn_if_slow` runs once a model is loaded, before the render.

Errors follow one style (see :func:`rpg.cli.main`): :class:`UsageError` for a bad command-line
value (exit status 2, the message names the flag) and any other error for what goes wrong at
run time (exit status 1, file errors name the file).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.cost import duration as _duration
from rpg.cost import estimate_step_seconds
from rpg.errors import ConfigurationError, PlannerError, RegistryError
from rpg.pydantic_errors import problems

if TYPE_CHECKING:
    from rpg.models import GenerationRequest
    from rpg.planners.base import Planner

__all__ = [
    "FIELD_FLAGS",
    "UsageError",
    "check_option_flags",
    "check_output_dir",
    "check_output_file",
    "check_scheduler_flag",
    "estimate_step_seconds",
    "make_planner",
    "read_plan_file",
    "validate_request",
    "validation_message",
    "warn_if_slow",
]

log = logging.getLogger("rpg.cli")

#: ``GenerationRequest`` fields and the flags that set them, for messages about bad values.
FIELD_FLAGS: dict[str, str] = {
    "prompt": "PROMPT",
    "plan": "--plan",
    "planner": "--planner",
    "model": "--model",
    "width": "--size",
    "height": "--size",
    "steps": "--steps",
    "guidance_scale": "--guidance",
    "negative_prompt": "--negative",
    "seed": "--seed",
    "num_images": "--num-images",
    "scheduler": "--scheduler",
    "base_ratio": "--base-ratio",
    "controls": "--control-scale",
    "loras": "--lora",
    "init_image": "--init-image",
    "strength": "--strength",
    "hires": "--hires",
}

#: The file formats rpg writes images in: PNG only, because the plan and the request live in a
#: PNG text chunk (that is what ``--from`` reads) and no other format keeps them.
IMAGE_SUFFIXES = (".png",)


class UsageError(ConfigurationError):
    """A bad command-line value: the command shows its usage line and exits with status 2."""


# ----------------------------------------------------------------------------- request values


def parse_key_values(items: list[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` from a repeatable ``KEY=VALUE`` flag as ``{"a": "1", "b": "x"}``."""
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        options[key.strip()] = value
    return options


def validation_message(exc: ValidationError, flags: Mapping[str, str] | None = None) -> str:
    """One line for a pydantic error; fields in ``flags`` are named by their flag."""
    parts = []
    for problem in problems(exc, lower=True):
        field, msg = problem.field, problem.message
        if flags is not None and field in flags:
            flag = flags[field]
            if flag.startswith("--size") and field in ("width", "height"):
                msg = f"{field} {msg}"
            parts.append(f"{flag}: {msg}")
        else:
            parts.append(f"{problem.where(exc.title)}: {msg}")
    return "; ".join(parts)


def validate_request(
    data: Mapping[str, Any], *, from_flags: Collection[str], source: str | None = None
) -> GenerationRequest:
    """``GenerationRequest.model_validate(data)`` with errors in the command's terms.

    ``from_flags`` are the fields the command line set: a bad value there is a
    :class:`UsageError` naming the flag (``--guidance: input should be ...``). Other fields came
    from ``source`` (an image given to ``--from``), and their errors name that file.
    """
    from rpg.models import MAX_SEED, GenerationRequest

    seed, count = data.get("seed"), data.get("num_images", 1)
    if isinstance(seed, int) and isinstance(count, int) and seed + count - 1 > MAX_SEED:
        raise UsageError(
            f"--seed {seed} with --num-images {count}: image i uses seed + i, and the "
            f"largest seed is 2**64 - 1 = {MAX_SEED}; give a smaller --seed"
        )
    try:
        return GenerationRequest.model_validate(dict(data))
    except ValidationError as exc:
        fields = {p.field for p in problems(exc) if p.loc}
        flagged = {f: FIELD_FLAGS[f] for f in fields if f in from_flags and f in FIELD_FLAGS}
        if flagged or source is None:
            raise UsageError(validation_message(exc, {**FIELD_FLAGS, **flagged})) from None
        raise ConfigurationError(
            f"{source}: the recorded request is invalid: {validation_message(exc)}"
        ) from None


def model_pipeline_class(model: str | None) -> str | None:
    """The pipeline class a model folder or tiny name holds (``model_index.json``), read without
    importing torch; ``None`` when that takes more (a single file, a hub id)."""
    import json

    from rpg.backbones.tiny import tiny_model

    if model is None:
        return None
    tiny = tiny_model(model, "pipeline")
    if tiny is not None:
        return tiny.pipeline or None
    index = Path(model).expanduser() / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def check_option_flags(options: Mapping[str, Any], model: str | None) -> None:
    """Model-family option flags, before any model loads: each value against the option's
    declaration, and each option against the family of ``model`` when that is known from its
    folder or tiny name. Errors are :class:`UsageError` naming the flag."""
    from rpg.backbones.options import BUILTIN_OPTIONS, cli_option_fields, families_taking

    fields = {f.name: f for f in cli_option_fields()}
    for name, value in options.items():
        flag = fields[name].flag
        model_cls = BUILTIN_OPTIONS[families_taking(name)[0]]
        try:
            model_cls.model_validate({name: value})
        except ValidationError as exc:
            raise UsageError(validation_message(exc, {name: flag})) from None
    family = BUILTIN_OPTIONS.get(model_pipeline_class(model) or "")
    if family is None:
        return  # not known before loading: the backbone checks after the load
    foreign = [fields[n].flag for n in options if n not in family.model_fields]
    if foreign:
        takes = [fields[n].flag for n in family.model_fields if n in fields]
        raise UsageError(
            f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
            f"{model} ({model_pipeline_class(model)}); "
            + (f"it takes {', '.join(takes)}" if takes else "it takes no family options")
        )


def check_scheduler_flag(name: str | None, *, given: bool, source: str | None = None) -> None:
    """An unknown scheduler, before loading a model: a usage error when ``--scheduler`` set it.

    ``None`` is the model's own default, known only once the backbone is detected.
    """
    from rpg.backbones.schedulers import check_scheduler

    if name is None:
        return
    try:
        check_scheduler(name)
    except ConfigurationError as exc:
        if given or source is None:
            raise UsageError(f"--scheduler: {exc}") from None
        raise ConfigurationError(f"{source}: {exc}") from None


#: The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png_plan(path: Path) -> Any:
    """The plan recorded in a PNG rpg saved (its ``rpg`` text chunk)."""
    from rpg.metadata import MetadataError, read_metadata
    from rpg.models import RegionPlan

    try:
        data = read_metadata(path)
        raw = data.get("plan") or (data.get("request") or {}).get("plan")
        if raw is None:
            raise ConfigurationError(f"{path}: the image records no plan")
        return RegionPlan.model_validate(raw)
    except MetadataError as exc:
        raise ConfigurationError(str(exc)) from None
    except ValidationError as exc:
        raise ConfigurationError(
            f"{path}: the recorded plan is invalid: {validation_message(exc)}"
        ) from None


def read_plan_file(path: Path) -> Any:
    """``RegionPlan.load(path)``, every error naming the file; a PNG rpg saved gives its plan."""
    from rpg.models import RegionPlan

    if path.is_dir():
        raise ConfigurationError(f"{path}: is a folder, not a plan file (JSON)")
    try:
        with path.open("rb") as fh:
            is_png = fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: plan file not found") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the plan file: {exc.strerror}") from None
    if is_png:
        return _read_png_plan(path)
    try:
        return RegionPlan.load(path)
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: not a valid plan: {validation_message(exc)}") from None
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: plan file not found") from None
    except ValueError as exc:
        message = str(exc)
        raise ConfigurationError(
            message if str(path) in message else f"{path}: {message}"
        ) from None


# ----------------------------------------------------------------------------- output paths


def _existing_ancestor(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_output_dir(folder: Path, *, for_file: Path | None = None) -> None:
    """``folder`` exists as a writable folder or can be created; else say which part is wrong."""
    what = f"cannot write {for_file}" if for_file is not None else f"cannot write into {folder}"
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"{what}: {folder} is a file, not a folder")
    ancestor = _existing_ancestor(folder)
    if not ancestor.is_dir():
        raise ConfigurationError(f"{what}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{what}: no permission to write in {ancestor}")
    # os.access says yes to root everywhere, and to file systems that refuse files (/sys,
    # /proc, a read-only mount): make (and remove) a file to know before the render.
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"{what}: files cannot be created in {ancestor} ({exc.strerror or exc})"
        ) from None


def check_output_file(path: Path, *, flag: str = "--out") -> None:
    """``path`` is a PNG name rpg can write (its folder may still have to be made).

    Another suffix is refused rather than converted: only PNG carries the plan and request that
    make an image re-renderable, and writing PNG bytes under a ``.jpg`` name would lie.
    """
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        shown = path.suffix or "no suffix"
        raise UsageError(
            f"{flag} {path}: rpg writes PNG images ({shown} given), because only PNG keeps the "
            f"plan and request that '--from' reads back; use {path.with_suffix('.png')} and "
            "convert the copy you need afterwards"
        )
    if path.is_dir():
        raise ConfigurationError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigurationError(f"cannot write {path}: no permission to overwrite it")
    check_output_dir(path.parent, for_file=path)


# ----------------------------------------------------------------------------- planners


def make_planner(
    name: str,
    options: Mapping[str, Any],
    *,
    images: str | None = None,
    flag: str = "--planner",
) -> Planner:
    """The planner ``name`` made with ``options``, or an error before any model is loaded.

    An unknown name or an option the planner does not take is a :class:`UsageError`; a missing
    API key or package is the planner's own :class:`~rpg.errors.ConfigurationError`. With
    ``images`` (the reason, e.g. ``"--refine"``) the planner must be able to look at images.
    """
    from rpg.plugins import planner_registry

    registry = planner_registry()
    try:
        factory = registry.get(name).target
    except RegistryError as exc:
        raise UsageError(f"{flag} {name}: {exc}") from None
    try:
        planner: Planner = factory(**options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        given = ", ".join(k for k in options if k != "cache") or "none"
        raise UsageError(
            f"{flag} {name} does not take the options given ({given}): {exc}"
        ) from None
    if images is not None:
        from rpg.planners.feedback import as_multimodal

        try:
            as_multimodal(planner)
        except PlannerError as exc:
            chose = f" ('{name}' chose '{planner.name}')" if planner.name != name else ""
            raise UsageError(
                f"{images} needs a planner that can look at images{chose}: {exc}"
            ) from None
    return planner


# ----------------------------------------------------------------------------- render size

#: Above this estimate (seconds for the whole render) the command warns before starting.
SLOW_RENDER_SECONDS = 600.0


def warn_if_slow(backbone: Any, request: GenerationRequest) -> float | None:
    """Warn before a CPU render whose latent work will take very long; return the estimate.

    Nothing else would say so: the first denoising step of a 4096×4096 image on a CPU takes
    many minutes, and the progress bar sits at 0 until it ends.
    """
    device = getattr(backbone, "device", None)
    if device is None or getattr(device, "type", str(device)) != "cpu":
        return None
    width, height = request.width, request.height
    if width is None or height is None:
        width, height = backbone.native_size
    per_step = estimate_step_seconds(backbone, width, height, images=request.num_images)
    if per_step is None:
        return None
    total = per_step * request.steps
    if total < SLOW_RENDER_SECONDS:
        return total
    # The counted work grows with the square of the pixel count.
    side = 8 * math.floor(math.sqrt(width * height * math.sqrt(SLOW_RENDER_SECONDS / total)) / 8)
    smaller = ""
    if 8 <= side < min(width, height):
        smaller = f" or --size {side}x{side} or smaller (about {_duration(SLOW_RENDER_SECONDS)})"
    log.warning(
        "%dx%d on the CPU: self-attention alone needs at least %s per denoising step, %s for "
        "%d steps; use a GPU (--device cuda)%s, or press Ctrl-C to stop",
        width,
        height,
        _duration(per_step),
        _duration(total),
        request.steps,
        smaller,
    )
    return total
