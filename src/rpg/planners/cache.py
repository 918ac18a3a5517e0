"""An on-disk cache of plans, so asking again for the same prompt costs nothing.

A plan is keyed by :func:`plan_cache_key`: the SHA-256 of the planner's identity (its id, model,
the server it talks to and every option that changes the answer, from
:meth:`~rpg.planners.chat.ChatPlanner.cache_identity`), the prompt, the instruction template's
version and (when there is one) a hash of the image's pixels; changing any of them asks the
model again. Entries are JSON files of :class:`~rpg.models.PlanResult` under
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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.models import PlanResult
from rpg.paths import cache_dir

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.planners.base import Planner

__all__ = ["CachedPlanner", "PlanCache", "cache_key", "plan_cache_key", "planner_identity"]

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
    options: Mapping[str, Any] | None = None,
) -> str:
    """The hex SHA-256 naming a cache entry (``template`` defaults to the current version).

    ``options`` are whatever else decides the answer (server, temperature, ...); they must be
    JSON-serialisable (anything else is keyed by its ``repr``).
    """
    from rpg.metadata import image_sha256

    parts: dict[str, Any] = {
        "planner": planner,
        "model": model,
        "prompt": prompt,
        "template": _template_version() if template is None else template,
        "image": "" if image is None else image_sha256(image),
    }
    if options:
        parts["options"] = dict(options)
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def planner_identity(planner: Planner) -> dict[str, Any]:
    """What decides ``planner``'s answer to a prompt: its ``cache_identity()`` when it has one.

    Any other planner is identified by its ``planner_id`` (else ``name``) and ``model``.
    Wrappers such as :class:`CachedPlanner` report the planner they wrap.
    """
    identity = getattr(planner, "cache_identity", None)
    if callable(identity):
        return dict(identity())
    return {
        "planner": str(getattr(planner, "planner_id", None) or planner.name),
        "model": str(getattr(planner, "model", "") or ""),
    }


def plan_cache_key(planner: Planner, prompt: str, *, image: Image | None = None) -> str:
    """The key of ``planner``'s plan for ``prompt`` (and ``image``) in the plan cache.

    Two planners share a key only when they would be asked the same thing in the same way: same
    backend and model, same server (base URL, Ollama host), same answer-changing options
    (temperature, token limits, ...), same prompt, instruction template and image. Retry
    settings and API keys are not part of it. Batch runs and the orchestrator use it too.
    """
    identity = planner_identity(planner)
    name = str(identity.pop("planner", planner.name))
    model = str(identity.pop("model", ""))
    return cache_key(name, model, prompt, image=image, options=identity)


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

    The key is :func:`plan_cache_key` of the wrapped planner. A plan
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

    def cache_identity(self) -> dict[str, Any]:
        return planner_identity(self.planner)

    def key(self, prompt: str, *, image: Image | None = None) -> str:
        return plan_cache_key(self.planner, prompt, image=image)

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
