"""The file routes: uploads (a PNG to reopen, a mask, an init image) and the rendered PNGs.

``POST /api/reopen``, ``POST /api/mask`` and ``POST /api/init-image`` take raw bytes, not JSON
(:data:`RAW_ROUTES` tells the :class:`~rpg.ui.guard.Guard` their limits and content types);
``GET /api/images/{name}`` serves only the PNGs this app wrote, by their random names.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from rpg.cli import format_error
from rpg.metadata import MetadataError, load_request, read_init_image
from rpg.ui.bodies import MAX_MASK_UPLOAD_BYTES, MAX_UPLOAD_BYTES
from rpg.ui.guard import read_body
from rpg.ui.http import UserError
from rpg.ui.init_images import InitImageError
from rpg.ui.masks import read_mask

if TYPE_CHECKING:
    from rpg.ui.editor import Editor

__all__ = ["RAW_ROUTES", "FileRoutes"]

_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.png$")
_PNG_TYPES: tuple[str, ...] = ("image/png", "application/octet-stream")
_REOPEN_TOO_LARGE = "the file is larger than {limit}, the most a PNG to reopen may have"
_MASK_TOO_LARGE = "the file is larger than {limit}, the most a mask image may have"
_INIT_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
_INIT_TOO_LARGE = "the picture is larger than {limit}, the most an init image may have"

#: The routes whose body is a file: ``(path, byte limit, content types, too-large message)``.
RAW_ROUTES: tuple[tuple[str, int, tuple[str, ...], str], ...] = (
    ("/api/reopen", MAX_UPLOAD_BYTES, _PNG_TYPES, _REOPEN_TOO_LARGE),
    ("/api/mask", MAX_MASK_UPLOAD_BYTES, _PNG_TYPES, _MASK_TOO_LARGE),
    ("/api/init-image", MAX_UPLOAD_BYTES, _INIT_TYPES, _INIT_TOO_LARGE),
)


def _filename(request: Request, default: str) -> str:
    """The uploaded file's name; the page sends it URL-encoded (headers are Latin-1 only)."""
    return Path(unquote(request.headers.get("x-filename") or default)).name


class FileRoutes:
    """The handlers that take uploads and serve rendered PNGs."""

    def __init__(self, editor: Editor) -> None:
        self.editor = editor

    async def mask(self, request: Request) -> Response:
        body = await read_body(request, MAX_MASK_UPLOAD_BYTES, _MASK_TOO_LARGE)
        filename = _filename(request, "mask.png")
        if not body:
            raise UserError("the mask file is empty", "mask")
        return JSONResponse({"mask": read_mask(body, filename).model_dump(mode="json")})

    async def init_image(self, request: Request) -> Response:
        """``POST /api/init-image``: keep a picture for img2img; answers its id and size."""
        body = await read_body(request, MAX_UPLOAD_BYTES, _INIT_TOO_LARGE)
        try:
            return JSONResponse(self.editor.init_images.add(body))
        except InitImageError as exc:
            raise UserError(str(exc), "init-image") from None

    async def image(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.editor.output_dir / name
        known = name in self.editor.images
        if not known or not _IMAGE_NAME.match(name) or not path.is_file():
            return JSONResponse({"error": f"no image {name!r}"}, 404)
        return FileResponse(path, media_type="image/png", filename=f"rpg-{name}")

    async def reopen(self, request: Request) -> Response:
        body = await read_body(request, MAX_UPLOAD_BYTES, _REOPEN_TOO_LARGE)
        filename = _filename(request, "image.png")
        if not body:
            raise UserError("the file is empty", "reopen")
        with tempfile.TemporaryDirectory(dir=self.editor.output_dir) as tmp:
            path = Path(tmp) / "upload.png"
            path.write_bytes(body)
            try:
                req = load_request(path)
            except MetadataError as exc:
                message = str(exc).replace(str(path), filename)
                raise UserError(message, "reopen") from None
            except ValidationError as exc:
                raise UserError(f"{filename}: {format_error(exc)}", "reopen") from None
            # an img2img PNG: its embedded init image becomes an upload the page can render with
            try:
                init = read_init_image(path) if req.init_image_sha256 else None
            except MetadataError as exc:
                raise UserError(str(exc).replace(str(path), filename), "reopen") from None
        fields = req.model_dump(mode="json", exclude={"plan"})
        view = self.editor.view(req.plan, req.width, req.height) if req.plan is not None else None
        out: dict[str, Any] = {"request": fields, "view": view, "filename": filename}
        if init is not None:
            out["init_image"] = self.editor.init_images.keep(init)
        return JSONResponse(out)
