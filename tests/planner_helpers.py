"""Helpers shared by the planner tests: reply data builders, waits, ports, environment, images."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

__all__ = ["Sleeps", "closed_port", "decode_b64_image", "isolate_env", "one_row"]


class Sleeps:
    """Records the waits a RetryPolicy asks for instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *unset: str) -> None:
    """Unset the ``unset`` environment variables and point the plan cache into ``tmp_path``."""
    for var in unset:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path / "cache"))


def one_row(*regions: tuple[str, float]) -> list[dict[str, Any]]:
    """The ``rows`` of a reply with one row of height 1 holding ``(prompt, width)`` regions."""
    return [{"height": 1, "regions": [{"prompt": p, "width": w} for p, w in regions]}]


def decode_b64_image(data: str) -> Image.Image:
    """The image in base64 ``data``, as sent to a multimodal API."""
    return Image.open(io.BytesIO(base64.b64decode(data)))
