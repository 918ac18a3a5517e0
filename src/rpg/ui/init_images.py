"""Init images the editor uploads for img2img, kept in memory by an opaque id.

The page sends a picture to ``POST /api/init-image`` and gets an id; a render names that id
(``init_image_id``), never a path, so a browser cannot make the server open a file of its
choosing. Only the last :data:`MAX_KEPT` uploads are kept; an unknown or forgotten id is a clear
error asking to upload again.
"""

from __future__ import annotations

import io
import secrets
import threading
import warnings
from collections import OrderedDict
from typing import Any

from PIL import Image

from rpg.layout import MAX_SIDE

__all__ = ["MAX_KEPT", "InitImageError", "InitImages"]

#: Uploads kept (the oldest is forgotten first).
MAX_KEPT = 16


class InitImageError(ValueError):
    """An upload that is not a usable picture, or an id that names none."""


class InitImages:
    """The uploaded init images, by id (thread-safe: renders read them from the job thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: OrderedDict[str, Image.Image] = OrderedDict()

    def add(self, data: bytes) -> dict[str, Any]:
        """Decode ``data`` (PNG, JPEG, WebP ...) to RGB and keep it; returns its id and size."""
        if not data:
            raise InitImageError("the file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as opened:
                    width, height = opened.size
                    if max(width, height) > MAX_SIDE:
                        raise InitImageError(
                            f"the picture is {width}x{height}; rpg renders at most {MAX_SIDE} px "
                            "a side: scale it down first"
                        )
                    image = opened.convert("RGB")
        except InitImageError:
            raise
        except (OSError, ValueError, Image.DecompressionBombWarning) as exc:
            raise InitImageError(f"not a readable picture: {exc}") from None
        return self.keep(image)

    def keep(self, image: Image.Image) -> dict[str, Any]:
        """Keep a decoded RGB picture (a reopened PNG's embedded one); returns its id and size."""
        key = f"init-{secrets.token_hex(8)}"
        with self._lock:
            self._images[key] = image
            while len(self._images) > MAX_KEPT:
                self._images.popitem(last=False)
        return {"id": key, "width": image.width, "height": image.height}

    def get(self, key: str) -> Image.Image:
        with self._lock:
            image = self._images.get(key)
        if image is None:
            raise InitImageError(
                f"no uploaded init image {key!r} (the server keeps the last {MAX_KEPT} and "
                "forgets them on restart): choose the picture again"
            )
        return image
