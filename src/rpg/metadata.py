"""PNG files that remember how they were made: the request and the plan in a text chunk.

Every image rpg saves carries an ``iTXt`` chunk with key :data:`PNG_KEY` (``"rpg"``) holding
``{"rpg": VERSION, "request": {...}, "plan": {...}}`` as JSON, so ``rpg generate --from
IMAGE.png`` can render it again, or with one setting changed. Only the request and the plan are
written: no planner options, no API keys, no paths other than the request's ``model`` string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from rpg.errors import RPGError
from rpg.models import GenerationRequest, RegionPlan

__all__ = [
    "PNG_KEY",
    "MetadataError",
    "image_request",
    "load_request",
    "read_metadata",
    "save_png",
]

PNG_KEY = "rpg"
_VERSION = 1


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


def save_png(
    image: Image.Image,
    path: str | os.PathLike[str],
    request: GenerationRequest,
    plan: RegionPlan | None = None,
    *,
    index: int | None = None,
) -> Path:
    """Save ``image`` as PNG at ``path`` with the request and plan in the ``rpg`` text chunk.

    ``plan`` defaults to ``request.plan``. With ``index``, the request stored is
    :func:`image_request` of that index, so the file re-renders to itself. The file is always
    PNG, whatever its suffix (temporary names such as ``x.png.part`` work).
    """
    if index is not None:
        request = image_request(request, index)
    plan = plan if plan is not None else request.plan
    payload: dict[str, Any] = {
        "rpg": _VERSION,
        "request": request.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json") if plan is not None else None,
    }
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, json.dumps(payload, ensure_ascii=False), zip=True)
    target = Path(path)
    image.save(target, format="PNG", pnginfo=info)
    return target


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``rpg`` JSON of a PNG file, or :class:`MetadataError` saying why there is none."""
    p = Path(path)
    try:
        with Image.open(p) as img:
            img.load()
            text = getattr(img, "text", {}) or {}
            fmt = img.format
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {p}") from None
    except OSError as exc:
        raise MetadataError(f"{p} is not a readable image: {exc}") from None
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
