"""The work on one batch item, the same in every engine: plan it, render it, write its files.

A :class:`PlanBook` plans each distinct (planner, planner options, prompt) once;
:func:`render_item` renders an item and writes its PNGs with an atomic rename, and returns the
item's manifest record (a failure is a record too, never an exception).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.batch_manifest import PART_SUFFIX
from rpg.batch_requests import BatchItem

if TYPE_CHECKING:
    from rpg.models import GenerationResult, RegionPlan
    from rpg.orchestrator import RPG
    from rpg.planners.base import Planner

__all__ = [
    "PlanBook",
    "PlannerSource",
    "failure_record",
    "plan_item",
    "planner_source",
    "render_item",
    "worker_name",
]


PlannerSource = Callable[[str | None, Mapping[str, Any]], "Planner"]


class PlanBook:
    """The plans of a batch, one per (planner, planner options, prompt), made on first need.

    ``planners(name, options)`` gives the planner for a request's ``planner`` (``None``: the
    default one) with those options.
    """

    def __init__(self, planners: PlannerSource) -> None:
        self._planners = planners
        self._plans: dict[tuple[str | None, str, str], RegionPlan] = {}
        self.made = 0

    def plan_for(self, item: BatchItem) -> BatchItem:
        """``item`` with its plan filled in; raises what the planner raises."""
        request = item.request
        if request is None or request.plan is not None:
            return item
        options = json.dumps(dict(item.planner_options), sort_keys=True)
        key = (request.planner, options, request.prompt)
        plan = self._plans.get(key)
        if plan is None:
            planner = self._planners(request.planner, item.planner_options)
            plan = self._plans[key] = planner.plan(request.prompt).plan
            self.made += 1
        return item.with_plan(plan)


def planner_source(get_planner: Callable[[str | None], Planner], default: str) -> PlannerSource:
    """Planners for a :class:`PlanBook`: ``get_planner(name)`` (``None``: the ``default`` one,
    with its configured options) when a line gives no options, else one made with the line's
    options, once per (name, options).
    """
    made: dict[tuple[str, str], Planner] = {}

    def planners(name: str | None, options: Mapping[str, Any]) -> Planner:
        if not options:
            return get_planner(name)
        key = (name or default, json.dumps(dict(options), sort_keys=True))
        if key not in made:
            from rpg import create_planner

            made[key] = create_planner(key[0], **options)
        return made[key]

    return planners


def plan_item(book: PlanBook, item: BatchItem) -> BatchItem | dict[str, Any]:
    """``item`` with its plan filled in, or its failure record when its planner fails."""
    started = time.perf_counter()
    try:
        return book.plan_for(item)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return failure_record(item, exc, time.perf_counter() - started)


def worker_name() -> str:
    """``host:pid`` of the process rendering, as recorded in the manifest."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _atomic_save(result: GenerationResult, index: int, target: Path) -> None:
    """Write image ``index`` under a temporary name, fsync, then rename: never a partial PNG.

    The file gets the permissions a normal ``open`` gives (0666 less the umask).
    """
    from rpg.metadata import save_png

    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}{PART_SUFFIX}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        save_png(
            result.images[index],
            tmp,
            result.request,
            result.plan,
            index=index,
            control_images=result.control_images,
            init_image=result.init_image,
        )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself is durable once the folder is synced
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def failure_record(
    item: BatchItem, error: BaseException | str, seconds: float = 0.0, *, key: str | None = None
) -> dict[str, Any]:
    """The manifest record of an item that failed before or while rendering."""
    record = _record_head(item, key)
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    record.update(status="error", error=message, seconds=round(seconds, 3), worker=worker_name())
    return record


def _record_head(item: BatchItem, key: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"key": key or item.key, "line": item.line, "files": []}
    if item.request is not None:
        record.update(prompt=item.request.prompt, seed=item.request.seed)
    if item.unseeded is not None:
        record["unseeded"] = item.unseeded
    return record


def render_item(
    pipe: RPG, item: BatchItem, out_dir: str | os.PathLike[str], *, key: str | None = None
) -> dict[str, Any]:
    """Render one item into ``out_dir``; returns its manifest record, never raises.

    Only KeyboardInterrupt goes through (the run stops and resumes later). ``item`` should carry
    its plan (see :class:`PlanBook`); ``key`` is the key to record, that of the item as listed
    before planning (default: ``item.key``).
    """
    started = time.perf_counter()
    record = _record_head(item, key)
    try:
        if item.request is None:
            return failure_record(item, item.error or "invalid request", key=key)
        result = pipe.generate(item.request)
        files = []
        for index in range(len(result.images)):
            suffix = f"-{index}" if len(result.images) > 1 else ""
            name = f"{item.stem}{suffix}.png"
            _atomic_save(result, index, Path(out_dir) / name)
            files.append(name)
        record.update(status="done", error=None, files=files)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return failure_record(item, exc, time.perf_counter() - started, key=key)
    record.update(seconds=round(time.perf_counter() - started, 3), worker=worker_name())
    return record
