"""Render many requests with one loaded model: shared plans, a resumable manifest, atomic files.

A batch is a JSONL file of (partial) :class:`~rpg.models.GenerationRequest` objects. Every line is
expanded over the seeds, planned once per distinct (planner, planner options, prompt) (or given
one shared plan), rendered, and recorded in ``manifest.jsonl``. Running the same batch again skips
what is already done, so an interrupted run (Ctrl-C, a kill, a crash) resumes where it stopped.

This module is the local engine and the switch to the Ray engine (:mod:`rpg.batch_ray`); both
are built from the same pieces, so they write the same records and the same files:
:mod:`rpg.batch_requests` (the lines, expanded into items with their resume keys),
:mod:`rpg.batch_render` (plan, render and write one item) and :mod:`rpg.batch_manifest` (the
manifest, the counts, the progress bar). Their public names are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rpg.batch_manifest import (
    MANIFEST_NAME,
    BatchProgress,
    BatchReport,
    Manifest,
    read_manifest,
    record_all,
    remove_partial_files,
)
from rpg.batch_render import (
    PlanBook,
    PlannerSource,
    failure_record,
    plan_item,
    planner_source,
    render_item,
    worker_name,
)
from rpg.batch_requests import (
    PLANNER_OPTIONS,
    BatchItem,
    DrawnSeeds,
    expand_line,
    expand_requests,
    parse_line,
    parse_lines,
    read_requests,
    request_key,
)

if TYPE_CHECKING:
    from rpg.models import RegionPlan
    from rpg.orchestrator import RPG

__all__ = [
    "MANIFEST_NAME",
    "PLANNER_OPTIONS",
    "BatchItem",
    "BatchProgress",
    "BatchReport",
    "DrawnSeeds",
    "Manifest",
    "PlanBook",
    "PlannerSource",
    "expand_line",
    "expand_requests",
    "failure_record",
    "parse_line",
    "parse_lines",
    "pending_items",
    "plan_item",
    "planner_source",
    "read_manifest",
    "read_requests",
    "record_all",
    "remove_partial_files",
    "render_item",
    "request_key",
    "run_batch",
    "worker_name",
]


def pending_items(
    items: Sequence[BatchItem], manifest: Manifest, *, plan: RegionPlan | None = None
) -> tuple[list[BatchItem], int]:
    """The items still to do (with the shared ``plan`` filled in), and how many are skipped.

    Skipped: finished in an earlier run, or the same as an earlier item (identical lines render
    once, since they would write the same images).
    """
    todo: list[BatchItem] = []
    seen: set[str] = set()
    skipped = 0
    for item in items:
        if plan is not None and item.request is not None and item.request.plan is None:
            item = item.with_plan(plan)
        key = item.key
        if key in seen or manifest.is_finished(key):
            skipped += 1
        else:
            seen.add(key)
            todo.append(item)
    return todo, skipped


def _iter_local(
    pipe: RPG, todo: Sequence[BatchItem], out: Path, book: PlanBook
) -> Iterator[dict[str, Any]]:
    for item in todo:
        planned = plan_item(book, item)
        if isinstance(planned, dict):
            yield planned
            continue
        # the record keeps the key of the item as listed, so a resume recognises it
        yield render_item(pipe, planned, out, key=item.key)


def run_batch(
    pipe: Any,
    items: Sequence[BatchItem],
    out_dir: str | os.PathLike[str],
    *,
    plan: RegionPlan | None = None,
    progress: bool = True,
    engine: Literal["local", "ray"] = "local",
    **engine_options: Any,
) -> BatchReport:
    """Render ``items`` into ``out_dir``, skipping items the manifest records as done.

    ``pipe`` is a loaded :class:`~rpg.orchestrator.RPG` for the local engine; for
    ``engine="ray"`` it is a :class:`rpg.batch_ray.ModelSpec` that each Ray worker loads, and
    ``engine_options`` go to :func:`rpg.batch_ray.run_ray_batch` (``address``, ``workers``,
    ``num_gpus``); the items then enter its Ray Data pipeline from this process (give
    ``run_ray_batch`` the requests file instead to have Ray Data read it). Each distinct
    (planner, options, prompt) is planned once (or ``plan`` is used for every item without a
    plan). A failing item is recorded with its error and the batch goes
    on; only KeyboardInterrupt stops it, after which the next run resumes.
    """
    if engine == "ray":
        from rpg.batch_ray import run_ray_batch

        return run_ray_batch(pipe, items, out_dir, plan=plan, progress=progress, **engine_options)
    if engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine_options:
        raise TypeError(f"the local engine takes no options {sorted(engine_options)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)
    manifest = Manifest(out)
    todo, skipped = pending_items(items, manifest, plan=plan)
    book = PlanBook(planner_source(pipe.get_planner, pipe.planner_name))
    report = BatchReport(skipped=skipped)
    record_all(
        _iter_local(pipe, todo, out, book), manifest, report, BatchProgress(len(todo), progress)
    )
    report.plans_made = book.made
    return report
