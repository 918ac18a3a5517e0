"""Canny edge maps for canny ControlNets, made by OpenCV (the ``controlnet`` extra).

OpenCV's ``Canny`` is the detector canny ControlNets were trained on; at 1024×1024 it takes a
few milliseconds (``python bench/canny.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from rpg.errors import ConfigurationError

__all__ = ["canny_edges"]


def _gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """``image`` as 8-bit grey (arrays: 0–255 values, RGB weighted as PIL's ``"L"``)."""
    if isinstance(image, np.ndarray):
        arr = image.astype(np.float64)
        if arr.ndim == 3:
            arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])[: arr.shape[-1]]
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise ConfigurationError(
            "canny_edges needs OpenCV: pip install 'rpg-diffusion[controlnet]' "
            "(opencv-python-headless)"
        ) from None
    return cv2


def canny_edges(
    image: Image.Image | np.ndarray, low: float = 100, high: float = 200
) -> Image.Image:
    """Canny edge map of ``image`` as a black-and-white RGB image, for canny ControlNets.

    OpenCV's ``Canny`` on the 0–255 grey image with the L2 gradient and no pre-blur: pixels
    whose gradient is at least ``high`` are edges, and pixels of at least ``low`` are edges when
    connected to one; the usual 100/200 work; blur a noisy photo first.
    """
    if not 0 <= low <= high:
        raise ConfigurationError(f"canny thresholds need 0 <= low <= high, got {low}, {high}")
    gray = _gray(image)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ConfigurationError(f"canny_edges needs a 2-D image, got shape {gray.shape}")
    edges = _cv2().Canny(np.ascontiguousarray(gray), float(low), float(high), L2gradient=True)
    return Image.fromarray(np.stack([edges] * 3, axis=-1), mode="RGB")
