"""Where rpg keeps files of its own: one cache directory for tiny models and plans."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

#: Environment variable that moves rpg's cache (tests point it at a temporary folder).
CACHE_ENV = "RPG_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """rpg's cache directory (``$RPG_CACHE_DIR`` or the platform's user cache + ``rpg``), or a
    folder inside it: ``cache_dir("plans")``. Nothing is created here."""
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("rpg"))
    return root.joinpath(*parts)
