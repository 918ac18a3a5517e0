"""What runs on the Ray workers of ``rpg batch --ray``: the model they load and the operators
of the Ray Data pipeline (:mod:`rpg.batch_ray` is the driver that wires them).

Rows between operators hold plain columns; an item travels pickled (``item``), a record as JSON
(``record``), and an empty value stands for none (Arrow keeps one type per column). The planner
actor and the render actors reuse the local engine's pieces (:mod:`rpg.batch_render`), so both
engines write the same records and files.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rpg.batch_render import PlanBook, PlannerSource, plan_item, planner_source, render_item
from rpg.batch_requests import BatchItem, DrawnSeeds, expand_line, parse_line

if TYPE_CHECKING:
    from rpg.models import RegionPlan
    from rpg.orchestrator import RPG
    from rpg.planners.base import Planner

__all__ = [
    "ModelSpec",
    "PlannerActor",
    "RenderActor",
    "item_row",
    "key_row",
    "pack_item",
    "split_file",
    "unpack_item",
]


@dataclass(frozen=True)
class ModelSpec:
    """What every render worker loads, and the planner the planner actor plans with.

    The fields are those of :meth:`rpg.orchestrator.RPG.from_pretrained`. ``model`` must be
    loadable on every worker (a hub id in each node's cache, or a path they all see).
    """

    model: str
    device: str = "auto"
    dtype: str = "auto"
    config: str | None = None
    allow_download: bool = False
    controlnet: tuple[str, ...] = ()
    kv_cache: bool = True
    planner: str = "auto"
    planner_options: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> RPG:
        """Load the model (in a worker): no progress bars, one per item is shown by the driver."""
        from rpg.orchestrator import RPG

        options: dict[str, Any] = {"allow_download": self.allow_download}
        if self.config is not None:
            options["config"] = self.config
        if self.controlnet:
            options["controlnet"] = list(self.controlnet)
        pipe = RPG.from_pretrained(
            self.model,
            planner=self.planner,
            planner_options=dict(self.planner_options),
            device=self.device,
            dtype=self.dtype,
            **options,
        )
        pipe.backbone.cache_kv = self.kv_cache
        pipe.pipe.set_progress_bar_config(disable=True)
        return pipe

    def planners(self) -> PlannerSource:
        """Planners for a :class:`~rpg.batch_render.PlanBook`, as an RPG of this spec has."""
        made: dict[str, Planner] = {}

        def get_planner(name: str | None) -> Planner:
            name = name or self.planner
            if name not in made:
                from rpg import create_planner

                options = self.planner_options if name == self.planner else {}
                made[name] = create_planner(name, **options)
            return made[name]

        return planner_source(get_planner, self.planner)


def pack_item(item: BatchItem) -> bytes:
    return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_item(data: bytes) -> BatchItem:
    item = pickle.loads(data)
    if not isinstance(item, BatchItem):
        raise TypeError(f"expected a BatchItem in the pipeline, got {type(item).__name__}")
    return item


def item_row(index: int, item: BatchItem) -> dict[str, Any]:
    """An item as read: its line, position, and what the batch check looks at."""
    request = item.request
    return {
        "line": item.line,
        "index": index,
        "item": pack_item(item),
        "valid": request is not None,
        "model_named": request is not None and request.model is not None,
        "controlled": request is not None and bool(request.controls),
    }


def split_file(
    row: dict[str, Any],
    *,
    defaults: Mapping[str, Any],
    seeds: Sequence[int] | None,
    drawn: DrawnSeeds | None = None,
) -> Iterator[dict[str, Any]]:
    """One requests file into its items, numbered by line as :func:`rpg.batch.read_requests`.

    ``drawn`` gives lines without a seed one (random, or the one an earlier run recorded).
    """
    text = bytes(row["bytes"]).decode("utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        value = parse_line(number, line)
        if value is None:
            continue
        for index, item in enumerate(expand_line(number, value, defaults, seeds, drawn=drawn)):
            yield item_row(index, item)


def key_row(row: dict[str, Any], *, model: str | None, plan: RegionPlan | None) -> dict[str, Any]:
    """Fill in what the batch shares (the loaded model, ``--plan``) and compute the item's key."""
    item = unpack_item(row["item"])
    request = item.request
    if request is not None:
        if model is not None and request.model is None:
            item = replace(item, request=request.model_copy(update={"model": model}))
        if plan is not None and request.plan is None:
            item = item.with_plan(plan)
    return {"line": row["line"], "index": row["index"], "key": item.key, "item": pack_item(item)}


class PlannerActor:
    """The planner actor: drops finished and duplicate items, plans each prompt once."""

    def __init__(self, spec: ModelSpec, todo: Mapping[str, tuple[int, int]]) -> None:
        self.book = PlanBook(spec.planners())
        self.todo = dict(todo)  # key -> (line, index) of the one item with that key to render

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        key = row["key"]
        if self.todo.get(key) != (row["line"], row["index"]):
            return  # finished in an earlier run, or a duplicate of the item that renders
        del self.todo[key]
        item = unpack_item(row["item"])
        made = self.book.made
        planned = plan_item(self.book, item)
        if isinstance(planned, dict):
            out = {"item": b"", "record": json.dumps(planned)}
        else:
            out = {"item": pack_item(planned), "record": ""}
        yield {"key": key, "plans": self.book.made - made, **out}


class RenderActor:
    """A render actor: one loaded model; renders items into the output folder."""

    def __init__(self, spec: ModelSpec, out_dir: str) -> None:
        self.pipe = spec.load()
        self.out_dir = out_dir

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        record = row["record"]
        if not record:
            item = unpack_item(row["item"])
            record = json.dumps(render_item(self.pipe, item, self.out_dir, key=row["key"]))
        return {"key": row["key"], "plans": row["plans"], "record": record}
