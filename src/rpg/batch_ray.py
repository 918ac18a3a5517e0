"""The Ray engine of ``rpg batch``: render a batch across workers and machines.

The driver (this process) reads and numbers the requests, consults the manifest, plans each
distinct (planner, options, prompt) once, and writes every manifest record; a pool of Ray actors
(:class:`ray.util.ActorPool`), each holding one loaded model, renders the items and writes their
PNGs into the output folder with the same atomic rename as the local engine. The records, the
resume logic and the item renderer are those of :mod:`rpg.batch`, so both engines write the same
files and the same manifest.

Why actors and not Ray Data: resuming needs every item's line number and key on the driver
before anything is scheduled, and the manifest has one writer, the driver; reading the file with
Ray Data would only ship the lines back to the driver, and its read and map operators would take
CPUs that the render actors need on small clusters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.batch import (
    BatchItem,
    BatchProgress,
    BatchReport,
    Manifest,
    PlanBook,
    PlannerSource,
    failure_record,
    pending_items,
    planner_source,
    record_all,
    remove_partial_files,
    render_item,
)
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.models import RegionPlan
    from rpg.orchestrator import RPG
    from rpg.planners.base import Planner

__all__ = ["ModelSpec", "run_ray_batch"]

#: Environment variables the workers get from the driver (model caches, offline switches).
_FORWARDED_ENV = ("RPG_", "HF_", "TRANSFORMERS_", "HUGGINGFACE_")


@dataclass(frozen=True)
class ModelSpec:
    """What every worker loads, and the planner the driver plans with; sent to each Ray worker.

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
        """Planners for the driver's :class:`~rpg.batch.PlanBook`, as an RPG of this spec has."""
        made: dict[str, Planner] = {}

        def get_planner(name: str | None) -> Planner:
            name = name or self.planner
            if name not in made:
                from rpg import create_planner

                options = self.planner_options if name == self.planner else {}
                made[name] = create_planner(name, **options)
            return made[name]

        return planner_source(get_planner, self.planner)


class _Renderer:
    """A Ray actor body: one loaded model, renders items into the output folder."""

    def __init__(self, spec: ModelSpec, out_dir: str) -> None:
        self.pipe = spec.load()
        self.out_dir = out_dir

    def ready(self) -> str:
        from rpg.batch import worker_name

        return worker_name()

    def render(self, item: BatchItem, key: str) -> dict[str, Any]:
        return render_item(self.pipe, item, self.out_dir, key=key)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            "the Ray engine needs Ray: pip install 'rpg-diffusion[ray]'"
        ) from None
    return ray


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}


def _actor_resources(
    ray: Any, workers: int | None, num_gpus: float | None
) -> tuple[int, dict[str, float]]:
    """How many actors, and what each asks Ray for: one GPU each when the cluster has GPUs."""
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    cpus = float(total.get("CPU", 1))
    if num_gpus is None:
        num_gpus = 1.0 if gpus else 0.0
    if num_gpus:
        count = workers or max(1, int(gpus / num_gpus))
        return count, {"num_gpus": num_gpus, "num_cpus": 1}
    count = workers or 1
    return count, {"num_cpus": max(1, int(cpus // count))}


def _records(
    ray: Any,
    pool: Any,
    todo: Sequence[BatchItem],
    book: PlanBook,
) -> Iterator[dict[str, Any]]:
    """Plan on the driver just ahead of the workers, render on them; yield records as they come."""
    in_flight: dict[str, BatchItem] = {}
    last_error: BaseException | None = None
    queue = iter(todo)
    exhausted = False
    while True:
        while not exhausted and pool.has_free():
            item = next(queue, None)
            if item is None:
                exhausted = True
                break
            if item.request is None:
                yield failure_record(item, item.error or "invalid request")
                continue
            started = time.perf_counter()
            try:
                planned = book.plan_for(item)
            except Exception as exc:
                yield failure_record(item, exc, time.perf_counter() - started)
                continue
            in_flight[item.key] = item
            pool.submit(lambda actor, job: actor.render.remote(*job), (planned, item.key))
        if not pool.has_next():
            break
        try:
            record = pool.get_next_unordered()
        except ray.exceptions.RayError as exc:  # a worker died; its item is recorded below
            last_error = exc
            continue
        in_flight.pop(record["key"], None)
        yield record
    for item in in_flight.values():
        yield failure_record(item, f"the worker rendering it died: {last_error}")
    for item in queue:  # every worker is gone for good
        yield failure_record(item, f"no Ray worker is left to render it: {last_error}")


def run_ray_batch(
    spec: ModelSpec,
    items: Sequence[BatchItem],
    out_dir: str | os.PathLike[str],
    *,
    plan: RegionPlan | None = None,
    progress: bool = True,
    address: str | None = None,
    workers: int | None = None,
    num_gpus: float | None = None,
) -> BatchReport:
    """Render ``items`` on a Ray cluster; same manifest, files and resume as the local engine.

    ``address``: the cluster (``"auto"``, ``ray://host:10001``; default ``RAY_ADDRESS`` or a new
    local instance); when Ray is already initialised in this process, that cluster is used.
    ``workers``: render actors (default: one per GPU, else one). ``num_gpus``: per actor
    (default 1 when the cluster has GPUs, else CPU actors that share the CPUs evenly).
    ``out_dir`` must be a path every worker can write (a shared file system on a cluster).
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            "the Ray engine loads the model in each worker: pass rpg.batch_ray.ModelSpec(model=…) "
            f"instead of {type(spec).__name__}"
        )
    ray = _import_ray()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)
    manifest = Manifest(out)
    todo, skipped = pending_items(items, manifest, plan=plan)
    book = PlanBook(spec.planners())
    report = BatchReport(skipped=skipped)
    if not todo:
        return report

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, runtime_env={"env_vars": _worker_env()}, log_to_driver=False)
    try:
        from ray.util import ActorPool

        count, resources = _actor_resources(ray, workers, num_gpus)
        renderer = ray.remote(max_restarts=1, max_task_retries=0, **resources)(_Renderer)
        actors = [renderer.remote(spec, os.fspath(out)) for _ in range(min(count, len(todo)))]
        try:
            ray.get([actor.ready.remote() for actor in actors])
        except ray.exceptions.RayError as exc:
            raise ConfigurationError(f"the Ray workers could not load {spec.model}: {exc}") from exc
        records = _records(ray, ActorPool(actors), todo, book)
        try:
            record_all(records, manifest, report, BatchProgress(len(todo), progress))
        finally:
            report.plans_made = book.made
            for actor in actors:
                ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()
    return report
