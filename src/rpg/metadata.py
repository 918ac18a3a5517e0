"""PNG files that remember how they were made: the request, the plan and the control images.

Every image rpg saves carries an ``iTXt`` chunk with key :data:`PNG_KEY` (``"rpg"``) holding
``{"rpg": VERSION, "request": {...}, "plan": {...}}`` as JSON, so ``rpg generate --from
IMAGE.png`` can render it again, or with one setting changed. Only the request and the plan are
written: no planner options, no API keys, no paths other than the request's ``model``,
ControlNet and control-image strings. A request without ControlNet is written exactly as before
(no ``controls`` key), so older rpg versions still read it.

A ControlNet render also embeds each control image it used, so the PNG re-renders after the
edge map or pose file is moved or deleted: control image ``i`` is a PNG, base64-encoded, in
compressed ``iTXt`` chunks with keys ``rpg-control-i`` (and ``rpg-control-i.1``, ``.2``, ... for
the parts of a large image: Pillow refuses to open a PNG with a compressed text chunk over
1 MiB). The images are kept out of the ``rpg`` JSON so that it stays small and readable by any
PNG tool. Each embedded image is checked against ``controls[i].sha256`` (see
:func:`image_sha256`) when read back.

An img2img render embeds its init image the same way, under ``rpg-init`` (``rpg-init.1``, ...),
checked against the request's ``init_image_sha256`` (:func:`read_init_image`). A hires-fix
render needs nothing more: ``hires`` is a request field and the second pass starts from the
first pass's picture, which the re-render makes again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, PngImagePlugin

from rpg.errors import RPGError
from rpg.models import GenerationRequest, RegionPlan

__all__ = [
    "CONTROL_KEY_PREFIX",
    "INIT_KEY",
    "MAX_TEXT_CHUNK_BYTES",
    "MAX_TEXT_TOTAL_BYTES",
    "PNG_KEY",
    "MetadataError",
    "image_request",
    "image_sha256",
    "load_request",
    "read_control_images",
    "read_init_image",
    "read_metadata",
    "save_png",
]

PNG_KEY = "rpg"
#: The most text rpg writes in, and reads from, one PNG text chunk (UTF-8 bytes, after
#: decompression): Pillow's ``MAX_TEXT_CHUNK``, the size any Pillow opens without raising. The
#: request models keep a request and its plan well below it (see
#: :data:`rpg.models.MAX_REQUEST_JSON_BYTES`); a file with a larger chunk is refused unread.
MAX_TEXT_CHUNK_BYTES = 1024 * 1024
#: The most text, all chunks together, rpg reads from one PNG (Pillow's ``MAX_TEXT_MEMORY``).
MAX_TEXT_TOTAL_BYTES = 64 * 1024 * 1024
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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


def _check_text_chunks(p: Path) -> None:
    """Refuse a PNG whose text chunks are larger than rpg writes, before Pillow reads them.

    Reads only the chunk headers (8 bytes each) and seeks over the data: a 50 MB text chunk
    costs nothing to refuse. Files that are not PNG are left to Pillow.
    """
    total = 0
    with p.open("rb") as fh:
        if fh.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
            return
        while True:
            header = fh.read(8)
            if len(header) < 8:
                return
            length = int.from_bytes(header[:4], "big")
            kind = header[4:]
            if kind in _TEXT_CHUNKS:
                if length > MAX_TEXT_CHUNK_BYTES:
                    raise MetadataError(
                        f"{p} has a {kind.decode()} text chunk of {length / 2**20:.1f} MiB; rpg "
                        f"reads text chunks up to {MAX_TEXT_CHUNK_BYTES // 1024} KiB (the most it "
                        "writes), so this file was not written by rpg or was altered"
                    )
                total += length
                if total > MAX_TEXT_TOTAL_BYTES:
                    raise MetadataError(
                        f"{p} holds more than {MAX_TEXT_TOTAL_BYTES // 2**20} MiB of text "
                        "chunks; rpg reads at most that much"
                    )
            if kind == b"IEND":
                return
            fh.seek(length + 4, io.SEEK_CUR)  # data and CRC


def _read_text(p: Path) -> tuple[dict[str, str], str | None]:
    try:
        _check_text_chunks(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {p}") from None
    except IsADirectoryError:
        raise MetadataError(f"{p} is a folder, not an image") from None
    try:
        with Image.open(p) as img:
            img.load()
            text = dict(getattr(img, "text", {}) or {})
            fmt = img.format
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {p}") from None
    except ValueError as exc:
        if "MAX_TEXT_CHUNK" in str(exc):
            raise MetadataError(
                f"{p} has a compressed text chunk that holds more than "
                f"{MAX_TEXT_CHUNK_BYTES // 1024} KiB of text; rpg reads text chunks up to that "
                "size (the most it writes), so this file was not written by rpg or was altered"
            ) from None
        raise MetadataError(f"{p} is not a readable image: {exc}") from None
    except OSError as exc:
        raise MetadataError(f"{p} is not a readable image: {exc}") from None
    return text, fmt


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``rpg`` JSON of a PNG file, or :class:`MetadataError` saying why there is none.

    Embedded control images are not part of it; :func:`read_control_images` returns them.
    """
    p = Path(path)
    return _parse_metadata(p, *_read_text(p))


def _parse_metadata(p: Path, text: dict[str, str], fmt: str | None) -> dict[str, Any]:
    raw = text.get(PNG_KEY)
    if raw is None:
        what = "a PNG" if fmt == "PNG" else f"a {fmt or 'non-PNG'} file"
        raise MetadataError(
            f"{p} is {what} without rpg metadata (no '{PNG_KEY}' text chunk); only PNGs saved by "
            "rpg can be re-rendered — pass the prompt and settings instead"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{p}: the '{PNG_KEY}' text chunk is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "request" not in data:
        raise MetadataError(f"{p}: the '{PNG_KEY}' text chunk holds no request")
    return data


def load_request(path: str | os.PathLike[str]) -> GenerationRequest:
    """The request stored in an rpg PNG, with its plan, ready to render again."""
    data = read_metadata(path)
    request = GenerationRequest.model_validate(data["request"])
    if request.plan is None and data.get("plan") is not None:
        plan = RegionPlan.model_validate(data["plan"])
        request = request.model_copy(update={"plan": plan})
    return request


def read_init_image(path: str | os.PathLike[str]) -> Image.Image | None:
    """The init image embedded in an rpg PNG (RGB, matching ``init_image_sha256``), or ``None``
    when the render had none or it was too large to embed."""
    p = Path(path)
    text, fmt = _read_text(p)
    data = _parse_metadata(p, text, fmt)
    request = GenerationRequest.model_validate(data["request"])
    if INIT_KEY not in text:
        return None
    image = _decode_embedded(p, text, INIT_KEY, "the embedded init image")
    if request.init_image_sha256 is not None and image_sha256(image) != request.init_image_sha256:
        raise MetadataError(
            f"{p}: the embedded init image does not match its recorded sha256; the file is "
            "damaged — pass --init-image to render over a picture again"
        )
    return image


def _decode_embedded(p: Path, text: dict[str, str], key: str, what: str) -> Image.Image:
    parts = [text[key]]
    while f"{key}.{len(parts)}" in text:
        parts.append(text[f"{key}.{len(parts)}"])
    try:
        with Image.open(io.BytesIO(base64.b64decode("".join(parts), validate=True))) as img:
            return img.convert("RGB")
    except (binascii.Error, OSError, ValueError) as exc:
        raise MetadataError(f"{p}: {what} is unreadable: {exc}") from None


def read_control_images(path: str | os.PathLike[str]) -> list[Image.Image | None]:
    """The control images embedded in an rpg PNG, one per ``controls`` entry of its request.

    Each is an RGB image whose pixels match the recorded ``sha256`` (:class:`MetadataError`
    otherwise), or ``None`` where none is embedded (files written before rpg embedded them, or
    images too large to embed): such a control needs its file, or a new image.
    """
    p = Path(path)
    text, fmt = _read_text(p)
    data = _parse_metadata(p, text, fmt)
    request = GenerationRequest.model_validate(data["request"])
    images: list[Image.Image | None] = []
    for i, control in enumerate(request.controls):
        key = f"{CONTROL_KEY_PREFIX}{i}"
        if key not in text:
            images.append(None)
            continue
        parts = [text[key]]
        while f"{key}.{len(parts)}" in text:
            parts.append(text[f"{key}.{len(parts)}"])
        try:
            with Image.open(io.BytesIO(base64.b64decode("".join(parts), validate=True))) as img:
                image = img.convert("RGB")
        except (binascii.Error, OSError, ValueError) as exc:
            raise MetadataError(
                f"{p}: embedded control image {i + 1} is unreadable: {exc}"
            ) from None
        if control.sha256 is not None and image_sha256(image) != control.sha256:
            raise MetadataError(
                f"{p}: embedded control image {i + 1} does not match its recorded sha256; the "
                "file is damaged — pass --control-image to render with a control image again"
            )
        images.append(image)
    return images
