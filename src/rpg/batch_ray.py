"""The Ray engine of ``rpg batch``: a Ray Data pipeline that renders a batch across machines.

The requests flow through Ray Data; the driver (this process) only reads the manifest, counts,
and writes the records that stream back:

1. **Read.** ``ray.data.read_binary_files`` reads the JSONL file (a list of items passed from
   Python becomes ``ray.data.from_items``); a ``flat_map`` splits it into numbered lines and
   parses and expands each with :func:`rpg.batch_requests.parse_line` and
   :func:`rpg.batch_requests.expand_line`, so every item keeps its line number, key and error
   message exactly as the local engine makes them. Bad lines become items that carry their error.
2. **Key.** A ``map`` fills in the shared ``--plan`` (and, for the CLI, the model the batch
   loads) and computes each item's resume key; the result is materialised with one item per
   block, so the render actors can share it item by item. The driver fetches the keys alone to
   count what is finished (in the manifest, files present) or a duplicate, which is skipped.
3. **Plan.** A single planner actor (``flat_map`` on an actor pool of one) drops the finished
   and duplicate items and plans each distinct (planner, planner options, prompt) once with a
   :class:`~rpg.batch_render.PlanBook`; every item of that prompt gets the same plan. A planner
   error becomes the item's failure record.
4. **Render.** A ``map`` on an actor pool of ``workers`` render actors, each holding one model
   (:meth:`ModelSpec.load`), one GPU each when the cluster has GPUs (CPU actors otherwise),
   renders each item with :func:`rpg.batch_render.render_item`: the PNGs are written with the
   atomic rename into the output folder, and the record comes back.
5. **Record.** The driver iterates the results as they stream in and appends each record to
   ``manifest.jsonl`` (it is the only writer), with the same progress bar as the local engine.

The light operators (read, split, key, planner) ask Ray for no CPU and run before the render
actors start or alongside them, so on a small instance they never wait for CPUs the render
actors hold. A render actor that dies is restarted by Ray, and its item is retried once
when Ray knows it was lost; an item that still fails (or that Ray cannot tell whether it ran) is
dropped by Ray Data (``max_errored_blocks=-1``) and recorded by the driver as failed, and the
batch goes on.

This module is the driver; what runs on the workers (the model spec, the operators and the rows
between them) is :mod:`rpg.batch_ray_workers`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.batch_manifest import (
    BatchProgress,
    BatchReport,
    Manifest,
    record_all,
    remove_partial_files,
)
from rpg.batch_ray_workers import (
    ModelSpec,
    PlannerActor,
    RenderActor,
    item_row,
    key_row,
    split_file,
    unpack_item,
)
from rpg.batch_render import failure_record
from rpg.batch_requests import BatchItem, DrawnSeeds
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.models import RegionPlan

__all__ = ["ModelSpec", "run_ray_batch"]

#: Environment variables the workers get from the driver: model caches, offline switches, and
#: the planners' settings (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OLLAMA_HOST``).
_FORWARDED_ENV = ("RPG_", "HF_", "TRANSFORMERS_", "HUGGINGFACE_", "OPENAI_", "OLLAMA_")

#: What the driver is told about items that name a model or ControlNets, to check the batch.
BatchCheck = Callable[[Sequence[BatchItem]], "ModelSpec"]


# ----------------------------------------------------------------------------- the driver


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
        import ray.data.expressions
    except ImportError as exc:
        raise ConfigurationError(
            f"the Ray engine needs Ray Data ({exc}): pip install 'rpg-diffusion[ray]'"
        ) from None
    return ray


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}


def _actor_resources(
    ray: Any, workers: int | None, num_gpus: float | None
) -> tuple[int, dict[str, float]]:
    """How many render actors, and what each asks Ray for: one GPU each when there are GPUs."""
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    cpus = float(total.get("CPU", 1))
    if num_gpus is None:
        num_gpus = 1.0 if gpus else 0.0
    if num_gpus:
        count = workers or max(1, int(gpus / num_gpus))
        return count, {"num_gpus": num_gpus, "num_cpus": 1}
    count = workers or 1
    share = cpus // count if cpus >= count else cpus / count  # whole CPUs while there are enough
    return count, {"num_cpus": max(share, 0.01)}


@contextlib.contextmanager
def _quiet_data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for this run: no progress bars or execution logs of its own (the
    batch has its own bar); one item in flight per actor; and a dropped item instead of a
    stopped batch when a render worker dies for good. The previous settings come back after."""
    ctx = ray.data.DataContext.get_current()
    saved = {
        name: getattr(ctx, name)
        for name in (
            "enable_progress_bars",
            "print_on_execution_start",
            "max_errored_blocks",
            "max_tasks_in_flight_per_actor",
        )
    }
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1
    # one item at a time per actor: a worker that dies takes down (and retries) only its own
    ctx.max_tasks_in_flight_per_actor = 1
    data_logger.setLevel(logging.CRITICAL)  # its errors become records or our own error
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        data_logger.setLevel(level)


def _read_items(
    ray: Any,
    requests: str | os.PathLike[str] | Sequence[BatchItem],
    defaults: Mapping[str, Any] | None,
    seeds: Sequence[int] | None,
    drawn: DrawnSeeds | None = None,
) -> Any:
    """The items of the batch as a dataset: a requests file read by Ray Data, or given items."""
    if isinstance(requests, (str, os.PathLike)):
        path = os.fspath(requests)
        if "://" not in path:
            path = os.fspath(Path(path).resolve())
        files = ray.data.read_binary_files([path], num_cpus=0)
        return files.flat_map(
            split_file,
            fn_kwargs={"defaults": dict(defaults or {}), "seeds": seeds, "drawn": drawn},
            num_cpus=0,
        )
    if defaults or seeds:
        raise TypeError("defaults and seeds go with a requests file; expand_requests applies them")
    if not requests:
        return None
    rows = []
    for position, item in enumerate(requests):  # the position tells equal items apart
        if not isinstance(item, BatchItem):
            raise TypeError(f"expected BatchItems or a requests file, got {type(item).__name__}")
        rows.append(item_row(position, item))
    return ray.data.from_items(rows)


def _checked_items(ray: Any, items: Any) -> list[BatchItem]:
    """What a batch check needs: the items that name a model or ControlNets and, when some name
    ControlNets, a few that name none (for the message that refuses the mix)."""
    col = ray.data.expressions.col
    wanted = items.filter(expr=col("model_named") | col("controlled"))
    named = [unpack_item(r["item"]) for r in wanted.iter_rows()]
    if any(item.request is not None and item.request.controls for item in named):
        plain = items.filter(expr=col("valid") & ~col("controlled") & ~col("model_named"))
        named += [unpack_item(r["item"]) for r in plain.limit(6).iter_rows()]
    return sorted(named, key=lambda item: item.line)


def _todo(keys: Iterator[tuple[str, int, int]], manifest: Manifest) -> tuple[dict, int]:
    """The item to render per unfinished key (its first), and how many items are skipped."""
    todo: dict[str, tuple[int, int]] = {}
    skipped = 0
    for key, line, index in keys:
        if key in todo or manifest.is_finished(key):
            skipped += 1
        else:
            todo[key] = (line, index)
    return todo, skipped


def _records(
    ray: Any, results: Any, todo: Mapping[str, tuple[int, int]], keyed: Any, report: BatchReport
) -> Iterator[dict[str, Any]]:
    """The records as they stream in; then a failure record for each item Ray Data dropped."""
    missing = dict(todo)
    for row in results.iter_rows():
        missing.pop(row["key"], None)
        report.plans_made += int(row["plans"])
        yield json.loads(row["record"])
    if missing:
        wanted = ray.data.expressions.col("key").is_in(list(missing))
        lost = keyed.filter(expr=wanted, num_cpus=0)
        for row in lost.iter_rows():
            if missing.pop(row["key"], None) is not None:
                message = (
                    "its render worker died while rendering it (Ray restarts the worker; "
                    "run the batch again to retry the item)"
                )
                yield failure_record(unpack_item(row["item"]), message)


def run_ray_batch(
    spec: ModelSpec,
    requests: str | os.PathLike[str] | Sequence[BatchItem],
    out_dir: str | os.PathLike[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    plan: RegionPlan | None = None,
    progress: bool = True,
    address: str | None = None,
    workers: int | None = None,
    num_gpus: float | None = None,
    check: BatchCheck | None = None,
) -> BatchReport:
    """Render a batch with Ray Data; same manifest, files and resume as the local engine.

    ``requests``: a JSONL file that Ray Data reads (expanded with ``defaults`` and ``seeds`` as
    :func:`rpg.batch.expand_requests` does; on a cluster, a path the workers can read), or
    items already expanded. ``check``: called on the driver with the items that name a model or
    ControlNets, it returns the spec to load (and may raise to refuse the batch); the items
    without a model then record that spec's model. ``address``: the cluster (``"auto"``,
    ``ray://host:10001``, ``"local"``; default ``RAY_ADDRESS`` or a new local instance); when Ray
    is already initialised in this process, that cluster is used. ``workers``: render actors
    (default: one per GPU, else one). ``num_gpus``: per actor (default 1 when the cluster has
    GPUs, else CPU actors that share the CPUs evenly). ``out_dir`` must be a path every worker
    can write (a shared file system on a cluster).
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

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, runtime_env={"env_vars": _worker_env()}, log_to_driver=False)
    try:
        with _quiet_data_context(ray):
            return _run(ray, spec, requests, out, manifest, defaults, seeds, plan, progress,
                        workers, num_gpus, check)  # fmt: skip
    finally:
        if started_here:
            ray.shutdown()


def _run(
    ray: Any,
    spec: ModelSpec,
    requests: str | os.PathLike[str] | Sequence[BatchItem],
    out: Path,
    manifest: Manifest,
    defaults: Mapping[str, Any] | None,
    seeds: Sequence[int] | None,
    plan: RegionPlan | None,
    progress: bool,
    workers: int | None,
    num_gpus: float | None,
    check: BatchCheck | None,
) -> BatchReport:
    # lines without a seed draw one as the local engine does, or reuse the one recorded in OUT
    items = _read_items(ray, requests, defaults, seeds, DrawnSeeds(manifest.out_dir))
    if items is None:
        return BatchReport()
    items = items.materialize()  # read and parsed once; the check and the keys reuse it
    if isinstance(requests, (str, os.PathLike)) and items.count() == 0:
        raise ConfigurationError(f"{os.fspath(requests)}: has no requests")
    model = None
    if check is not None:
        spec = check(_checked_items(ray, items))
        model = spec.model
    keyed = (
        items.map(key_row, fn_kwargs={"model": model, "plan": plan}, num_cpus=0)
        # one item per block: a render actor takes one item at a time, so all of them share
        .repartition(target_num_rows_per_block=1)
        .materialize()
    )
    keys = (
        (row["key"], row["line"], row["index"])
        for row in keyed.select_columns(["key", "line", "index"]).iter_rows()
    )
    todo, skipped = _todo(keys, manifest)
    report = BatchReport(skipped=skipped)
    if not todo:
        return report

    count, resources = _actor_resources(ray, workers, num_gpus)
    count = min(count, len(todo))
    planned = keyed.flat_map(
        PlannerActor,
        fn_constructor_args=(spec, todo),
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0,
    )
    with warnings.catch_warnings():
        # Ray Data retries an item forever by default; its only knob for that, the actor's
        # remote args, is deprecated (to go in Ray 2.64, hence the pin in the ray extra)
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        results = planned.map(
            RenderActor,
            fn_constructor_args=(spec, os.fspath(out)),
            compute=ray.data.ActorPoolStrategy(size=count),
            max_task_retries=1,  # a worker that died: restarted, and its item retried once
            **resources,
        )
    try:
        record_all(
            _records(ray, results, todo, keyed, report),
            manifest,
            report,
            BatchProgress(len(todo), progress),
        )
    except ray.exceptions.RayError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its messages
        cause = [line.strip() for line in text.splitlines() if line.strip()][-1]
        if "creation task" in text:
            raise ConfigurationError(
                f"the Ray workers could not load {spec.model}: {cause}"
            ) from exc
        raise ConfigurationError(f"the Ray pipeline failed: {cause}") from exc
    return report
