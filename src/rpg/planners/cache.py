"""An on-disk cache of plans, so asking again for the same prompt costs nothing.

A plan is keyed by the SHA-256 of the planner id, the model, the prompt, the instruction
template's version and (when there is one) a hash of the image's pixels; changing any of them
asks the model again. Entries are JSON files of :class:`~rpg.models.PlanResult` under
``platformdirs.user_cache_dir("rpg")/plans`` (``~/.cache/rpg/plans`` on Linux), or under
``$RPG_CACHE_DIR/plans`` when that is set. Nothing secret goes in: a plan holds the prompt, the
model's reply and the planner's name, never a key or a URL with credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from rpg.models import PlanResult
from rpg.paths import cache_dir

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.planners.base import Planner

__all__ = ["CachedPlanner", "PlanCache", "cache_key"]

log = logging.getLogger("rpg.planners")

#: Suffix added to ``PlanResult.planner`` for a plan read from the cache.
CACHED_SUFFIX = " (cached)"


def _template_version() -> str:
    from rpg.planners.template import TEMPLATE_VERSION

    return TEMPLATE_VERSION


def cache_key(
    planner: str,
    model: str,
    prompt: str,
    *,
    image: Image | None = None,
    template: str | None = None,
) -> str:
    """The hex SHA-256 naming a cache entry (``template`` defaults to the current version)."""
    from rpg.metadata import image_sha256

    parts = {
        "planner": planner,
        "model": model,
        "prompt": prompt,
        "template": _template_version() if template is None else template,
        "image": "" if image is None else image_sha256(image),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class PlanCache:
    """A folder of cached plans. Unreadable entries are treated as misses and replaced."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir("plans")

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> PlanResult | None:
        path = self.path(key)
        try:
            return PlanResult.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("ignoring unreadable plan cache entry %s: %s", path, exc)
            return None

    def put(self, key: str, result: PlanResult) -> None:
        """Write atomically (temporary file, then rename), so readers never see half a file."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(result.model_dump_json(indent=2))
            os.replace(tmp, self.path(key))
        except OSError as exc:  # a read-only home must not break planning
            log.warning("could not write the plan cache in %s: %s", self.directory, exc)

    def clear(self) -> int:
        """Delete every cached plan; returns how many were removed."""
        removed = 0
        if self.directory.is_dir():
            for path in self.directory.glob("*.json"):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


class CachedPlanner:
    """Wraps a planner: returns a cached plan when there is one, else plans and stores it.

    The wrapped planner's ``planner_id`` (``backend/model``) and ``model`` go into the key. A plan
    read from the cache is marked by ``" (cached)"`` after its planner name, and ``seconds`` is
    the time the lookup took, so a report of "which planner ran and how long" stays true.
    """

    def __init__(self, planner: Planner, *, cache: PlanCache | None = None) -> None:
        self.planner = planner
        self.cache = cache or PlanCache()
        self.name = planner.name
        self.last_hit = False

    @property
    def model(self) -> str:
        return str(getattr(self.planner, "model", "") or "")

    @property
    def planner_id(self) -> str:
        return str(getattr(self.planner, "planner_id", self.planner.name))

    def __repr__(self) -> str:
        return f"CachedPlanner({self.planner!r}, dir={str(self.cache.directory)!r})"

    def key(self, prompt: str, *, image: Image | None = None) -> str:
        return cache_key(self.planner_id, self.model, prompt, image=image)

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult:
        """The cached plan for this prompt (and image), or a fresh one that is then cached."""
        start = time.perf_counter()
        key = self.key(prompt, image=image)
        hit = self.cache.get(key)
        if hit is not None and hit.recaption.original_prompt == prompt:
            self.last_hit = True
            name = (
                hit.planner if hit.planner.endswith(CACHED_SUFFIX) else hit.planner + CACHED_SUFFIX
            )
            return hit.model_copy(update={"planner": name, "seconds": time.perf_counter() - start})
        self.last_hit = False
        result = self.planner.plan(prompt, image=image)
        self.cache.put(key, result)
        return result
