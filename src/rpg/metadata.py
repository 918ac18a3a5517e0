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

This module reads; writing is :mod:`rpg.metadata_write` (re-exported here), which needs no model
class, so :mod:`rpg.models` can save without importing the reader.

An img2img render embeds its init image the same way, under ``rpg-init`` (``rpg-init.1``, ...),
checked against the request's ``init_image_sha256`` (:func:`read_init_image`). A hires-fix
render needs nothing more: ``hires`` is a request field and the second pass starts from the
first pass's picture, which the re-render makes again.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from rpg.metadata_write import (
    CONTROL_KEY_PREFIX,
    INIT_KEY,
    MAX_TEXT_CHUNK_BYTES,
    PNG_KEY,
    MetadataError,
    image_request,
    image_sha256,
    save_png,
)
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

#: The most text, all chunks together, rpg reads from one PNG (Pillow's ``MAX_TEXT_MEMORY``).
MAX_TEXT_TOTAL_BYTES = 64 * 1024 * 1024
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
