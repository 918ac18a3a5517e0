"""Helpers the test modules share for the reserved tiny models and torch's thread count."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads, then restore: CPU matmuls round by thread count, and
    one thread keeps the tiny DiT tests fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_tiny_models(root: Path, names: Iterable[str]) -> dict[str, Path]:
    """Write the named reserved tiny models under ``root``, where ``RPG_CACHE_DIR=root`` finds
    them; returns their folders by name."""
    from rpg.backbones.tiny import tiny_model

    folders = {}
    for name in names:
        found = tiny_model(name)
        assert found is not None, name
        folders[name] = found.write(root / name)
    return folders
