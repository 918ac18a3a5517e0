"""Control images and scales: opened, checked against the ControlNets and the render size, and
recorded in the request.

The request records each control by ControlNet name, image path, scale and a hash of the pixels
(:func:`rpg.metadata.image_sha256`), so a saved PNG re-renders with the same control, and a
changed image is noticed.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rpg.backbones.calls import PreparedInputs
from rpg.backbones.controlnet_loading import same_name
from rpg.errors import ConfigurationError
from rpg.models import MAX_CONTROL_SCALE, ControlInput

if TYPE_CHECKING:
    from rpg.models import GenerationRequest

__all__ = ["as_list", "check_control", "open_control_image", "resolve_controls"]

# Aspect ratios of a control image and the render may differ by this much (rounding to 8 px).
_ASPECT_TOLERANCE = 0.02


def open_control_image(item: Any) -> Any:
    """A control image given as a path, opened as RGB; anything else is returned unchanged."""
    if isinstance(item, (str, os.PathLike)):
        from PIL import Image as PILImage

        path = Path(item)
        try:
            with PILImage.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise ConfigurationError(f"control image not found: {path}") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read control image {path}: {exc}") from None
    return item


def _image_size(item: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image, an ``[H, W, C]`` array or a ``[.., C, H, W]`` tensor."""
    if isinstance(item, torch.Tensor):
        return int(item.shape[-1]), int(item.shape[-2])
    if isinstance(item, np.ndarray):
        if item.ndim == 4:
            item = item[0]
        return int(item.shape[1]), int(item.shape[0])
    size = getattr(item, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ConfigurationError(
        f"a control image must be a PIL image, a numpy array, a torch tensor or a file path, "
        f"not {type(item).__name__}"
    )


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _recorded_image(index: int, control: ControlInput) -> str:
    """The path of a recorded control image, or a :class:`ConfigurationError` saying what to do."""
    what = f"control image {index + 1} (for ControlNet {control.controlnet!r})"
    how = (
        "pass the control image again (image=..., CLI: --control-image FILE); a PNG saved by rpg "
        "embeds its control images, so 'rpg generate --from IMAGE.png' needs no file"
    )
    if control.image is None:
        raise ConfigurationError(f"{what} has no recorded path; {how}")
    if not os.path.isfile(os.path.expanduser(control.image)):
        raise ConfigurationError(f"{what} not found: {control.image}; {how}")
    return os.path.expanduser(control.image)


def check_control(
    image: Any, scale: Any, n: int, width: int, height: int
) -> tuple[list[Any], list[float]]:
    """Validate control images and scales for ``n`` ControlNets and the image size.

    One image per ControlNet, each with the render's aspect ratio (the pipeline resizes it
    to the render size; a different shape would be distorted); one scale for all or one per
    ControlNet, each finite and non-negative. Paths are opened as RGB images.
    """
    if image is None:
        raise ConfigurationError(
            f"this model has {n} ControlNet{'s' if n > 1 else ''}; pass one control image "
            "per ControlNet (image=..., CLI: --control-image FILE)"
        )
    images = as_list(image)
    if len(images) != n:
        raise ConfigurationError(
            f"got {len(images)} control image{'s' if len(images) != 1 else ''} for {n} "
            f"ControlNet{'s' if n != 1 else ''}; give exactly one image per ControlNet, in "
            "the order the ControlNets were given"
        )
    images = [open_control_image(item) for item in images]
    for i, item in enumerate(images):
        w, h = _image_size(item)
        if w <= 0 or h <= 0:
            raise ConfigurationError(f"control image {i + 1} is empty ({w}x{h})")
        if abs(math.log((w / h) / (width / height))) > _ASPECT_TOLERANCE:
            raise ConfigurationError(
                f"control image {i + 1} is {w}x{h} but the image to generate is "
                f"{width}x{height}: the aspect ratios differ, so the control would be "
                f"distorted; resize or crop the control image, or generate at its size "
                f"(--size {w // 8 * 8}x{h // 8 * 8})"
            )
    scales = [float(s) for s in as_list(scale)]
    if len(scales) == 1:
        scales = scales * n
    if len(scales) != n:
        raise ConfigurationError(
            f"got {len(scales)} control scales for {n} ControlNets; give one scale for all "
            "or one per ControlNet"
        )
    for s in scales:
        if not math.isfinite(s) or s < 0:
            raise ConfigurationError(f"control scale must be a non-negative number, got {s}")
        if s > MAX_CONTROL_SCALE:
            raise ConfigurationError(
                f"control scale must be at most {MAX_CONTROL_SCALE:g}, got {s:g}"
            )
    return images, scales


def resolve_controls(
    request: GenerationRequest,
    pipeline_kwargs: Mapping[str, Any],
    names: Sequence[str],
    *,
    width: int,
    height: int,
) -> PreparedInputs:
    """Resolve control images and scales for the ControlNets ``names`` and record them in the
    request's ``controls``.

    Images come from ``image=`` (one per ControlNet), else from the paths recorded in
    ``request.controls``; scales from ``controlnet_conditioning_scale=``, else from the
    request, else 1. Returns the request with ``controls`` filled in (ControlNet names, image
    paths, scales, pixel hashes), the pipeline kwargs with the opened images and scales, and
    the images to embed (PIL images; ``None`` for arrays and tensors).
    """
    from PIL import Image as PILImage

    from rpg.metadata import image_sha256

    names = list(names)
    recorded = list(request.controls)
    n = len(names)
    if recorded and len(recorded) != n:
        raise ConfigurationError(
            f"the request has {len(recorded)} ControlNet inputs but this RPG has {n} "
            f"ControlNet{'s' if n != 1 else ''} ({', '.join(names)}); load the ControlNets "
            "the request names, or give one control image per loaded ControlNet"
        )
    if recorded and [same_name(c.controlnet) for c in recorded] != [same_name(x) for x in names]:
        warnings.warn(
            f"the request names ControlNet(s) {[c.controlnet for c in recorded]} but this RPG "
            f"has {names}; rendering with the loaded ones and recording those",
            stacklevel=4,  # the caller of Backbone.prepare_inputs
        )
    kwargs = dict(pipeline_kwargs)
    given = kwargs.pop("image", None)
    scale = kwargs.pop("controlnet_conditioning_scale", None)
    from_request = given is None and bool(recorded)
    if from_request:
        given = [_recorded_image(i, control) for i, control in enumerate(recorded)]
    if scale is None:
        scale = [c.scale for c in recorded] if recorded else 1.0
    images, scales = check_control(given, scale, n, width, height)
    sources = given if isinstance(given, (list, tuple)) else [given]

    controls: list[ControlInput] = []
    embeddable: list[Any] = []
    for i, (image, source, value) in enumerate(zip(images, sources, scales, strict=True)):
        pil = image if isinstance(image, PILImage.Image) else None
        digest = image_sha256(pil) if pil is not None else None
        before = recorded[i] if recorded else None
        if from_request and before is not None:
            path: str | None = before.image  # as recorded, not as expanded to open it
        elif isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
        elif before is not None and digest is not None and digest == before.sha256:
            path = before.image  # the same pixels as recorded: keep the recorded path
        else:
            path = None
        if from_request and before is not None and before.sha256 not in (None, digest):
            warnings.warn(
                f"control image {i + 1} ({path}) has changed since the request was recorded "
                "(its sha256 differs), so the render will differ",
                stacklevel=4,  # the caller of Backbone.prepare_inputs
            )
        controls.append(ControlInput(controlnet=names[i], image=path, scale=value, sha256=digest))
        embeddable.append(pil)
    kwargs["image"] = images
    kwargs["controlnet_conditioning_scale"] = scales
    return PreparedInputs(
        request.model_copy(update={"controls": tuple(controls)}), kwargs, embeddable
    )
