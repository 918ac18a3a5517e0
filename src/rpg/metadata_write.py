"""Writing rpg's PNG metadata: the request, the plan, control and init images in text chunks.

The format is described in :mod:`rpg.metadata`, which reads it and re-exports everything here.
Writing needs no model class at run time (a request is only dumped and copied), so
:meth:`rpg.models.GenerationResult.save` uses this module without the models and the metadata
reader importing each other.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageChops, PngImagePlugin

from rpg.errors import RPGError

if TYPE_CHECKING:
    from rpg.models import GenerationRequest, RegionPlan

__all__ = [
    "CONTROL_KEY_PREFIX",
    "INIT_KEY",
    "MAX_TEXT_CHUNK_BYTES",
    "PNG_KEY",
    "MetadataError",
    "image_request",
    "image_sha256",
    "save_png",
]

PNG_KEY = "rpg"
#: The most text rpg writes in, and reads from, one PNG text chunk (UTF-8 bytes, after
#: decompression): Pillow's ``MAX_TEXT_CHUNK``, the size any Pillow opens without raising. The
#: request models keep a request and its plan well below it (see
#: :data:`rpg.models.MAX_REQUEST_JSON_BYTES`); a file with a larger chunk is refused unread.
MAX_TEXT_CHUNK_BYTES = 1024 * 1024
#: Key prefix of the text chunks holding embedded control images (``rpg-control-0``, ...).
CONTROL_KEY_PREFIX = "rpg-control-"
#: Key of the text chunk(s) holding an img2img render's init image (``rpg-init``, ``.1``, ...).
INIT_KEY = "rpg-init"
#: Request keys written only when set (img2img, hires fix), so plain renders read as before.
_IMG2IMG_KEYS = ("init_image", "init_image_sha256", "strength", "hires")
_VERSION = 1
# base64 characters per text chunk: below Pillow's 1 MiB limit on a decompressed text chunk.
_PART_CHARS = 512 * 1024
# All embedded control images together stay well below Pillow's 64 MiB limit on text chunks.
_MAX_EMBED_CHARS = 48 * 1024 * 1024


class MetadataError(RPGError, ValueError):
    """An image has no rpg metadata, or metadata that cannot be read."""


def image_request(request: GenerationRequest, index: int) -> GenerationRequest:
    """The single-image request that renders image ``index`` of ``request`` on its own.

    :meth:`rpg.orchestrator.RPG.generate` seeds image ``i`` with ``seed + i``, so image ``i`` of a
    batch is the one image of the same request with that seed.
    """
    if request.seed is None:
        raise ValueError("the request has no seed; use the request recorded in the result")
    if not 0 <= index < request.num_images:
        raise IndexError(f"image index {index} out of range for {request.num_images} images")
    return request.model_copy(update={"seed": request.seed + index, "num_images": 1})


def image_sha256(image: Image.Image) -> str:
    """SHA-256 (hex) of an image's pixels: ``b"WxH:"`` then its 8-bit RGB bytes, row by row.

    Pixels rather than file bytes, so the hash survives re-encoding (the copy embedded in a PNG,
    a file saved with other compression) and changes only when the picture the ControlNet sees
    changes. RGB because control images are converted to RGB before use.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode("ascii"))
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _encode_control(image: Image.Image) -> str:
    """``image`` as a base64 PNG; grey when all three channels agree (smaller, same pixels)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    red, green, blue = rgb.split()
    grey = (
        ImageChops.difference(red, green).getbbox() is None
        and ImageChops.difference(red, blue).getbbox() is None
    )
    buffer = io.BytesIO()
    (red if grey else rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _add_control_images(
    info: PngImagePlugin.PngInfo,
    request: GenerationRequest,
    control_images: Sequence[Image.Image | None],
) -> None:
    if len(control_images) != len(request.controls):
        raise ValueError(
            f"got {len(control_images)} control images for {len(request.controls)} controls in "
            "the request; pass result.control_images with result.request"
        )
    total = 0
    for i, (control, image) in enumerate(zip(request.controls, control_images, strict=True)):
        if image is None:
            continue
        if control.sha256 is not None and image_sha256(image) != control.sha256:
            raise ValueError(
                f"control image {i + 1} does not match the sha256 recorded in the request; pass "
                "the images the request was rendered with (result.control_images)"
            )
        text = _encode_control(image)
        total += len(text)
        if total > _MAX_EMBED_CHARS:
            warnings.warn(
                f"control image {i + 1} is too large to embed in the PNG; re-rendering it will "
                f"need the file ({control.image or 'pass --control-image'})",
                stacklevel=3,
            )
            continue
        parts = [text[k : k + _PART_CHARS] for k in range(0, len(text), _PART_CHARS)]
        for k, part in enumerate(parts):
            key = f"{CONTROL_KEY_PREFIX}{i}" + (f".{k}" if k else "")
            info.add_itxt(key, part, zip=True)


def _add_parts(info: PngImagePlugin.PngInfo, key: str, text: str) -> None:
    parts = [text[k : k + _PART_CHARS] for k in range(0, len(text), _PART_CHARS)]
    for k, part in enumerate(parts):
        info.add_itxt(key + (f".{k}" if k else ""), part, zip=True)


def _add_init_image(
    info: PngImagePlugin.PngInfo, request: GenerationRequest, image: Image.Image
) -> None:
    if request.init_image_sha256 is None:
        raise ValueError("the request records no init image; pass result.init_image with it")
    if image_sha256(image) != request.init_image_sha256:
        raise ValueError(
            "the init image does not match the sha256 recorded in the request; pass the image "
            "the request was rendered with (result.init_image)"
        )
    text = _encode_control(image)
    if len(text) > _MAX_EMBED_CHARS:
        warnings.warn(
            f"the init image is too large to embed in the PNG; re-rendering it will need the "
            f"file ({request.init_image or 'pass --init-image'})",
            stacklevel=3,
        )
        return
    _add_parts(info, INIT_KEY, text)


def save_png(
    image: Image.Image,
    path: str | os.PathLike[str],
    request: GenerationRequest,
    plan: RegionPlan | None = None,
    *,
    index: int | None = None,
    control_images: Sequence[Image.Image | None] | None = None,
    init_image: Image.Image | None = None,
) -> Path:
    """Save ``image`` as PNG at ``path`` with the request and plan in the ``rpg`` text chunk.

    ``plan`` defaults to ``request.plan``. With ``index``, the request stored is
    :func:`image_request` of that index, so the file re-renders to itself. ``control_images``
    (``result.control_images``: one per ``request.controls`` entry, ``None`` to skip one) are
    embedded, each checked against its recorded ``sha256``; so is ``init_image``
    (``result.init_image``, checked against ``init_image_sha256``). The file is always PNG,
    whatever its suffix (temporary names such as ``x.png.part`` work).
    """
    if index is not None:
        request = image_request(request, index)
    plan = plan if plan is not None else request.plan
    stored = request.model_dump(mode="json")
    if not stored["controls"]:
        del stored["controls"]  # plain renders keep the metadata older versions read
    for key in _IMG2IMG_KEYS:  # likewise without img2img or a hires pass
        if stored.get(key) is None:
            stored.pop(key, None)
    payload: dict[str, Any] = {
        "rpg": _VERSION,
        "request": stored,
        "plan": plan.model_dump(mode="json") if plan is not None else None,
    }
    text = json.dumps(payload, ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_CHUNK_BYTES:
        raise MetadataError(
            f"the request and plan are {size / 1024:.0f} KiB as JSON; a PNG text chunk that rpg "
            f"(or any Pillow) reads back holds at most {MAX_TEXT_CHUNK_BYTES // 1024} KiB — "
            "shorten the prompts"
        )
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, text, zip=True)
    if control_images:
        _add_control_images(info, request, control_images)
    if init_image is not None:
        _add_init_image(info, request, init_image)
    target = Path(path)
    image.save(target, format="PNG", pnginfo=info)
    return target
