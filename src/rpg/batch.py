"""Render many requests with one loaded model: shared plans, a resumable manifest, atomic files.

A batch is a JSONL file of (partial) :class:`~rpg.models.GenerationRequest` objects. Every line is
expanded over the seeds, planned once per distinct (planner, planner options, prompt) (or given
one shared plan), rendered, and recorded in ``manifest.jsonl``. Running the same batch again skips
what is already done, so an interrupted run (Ctrl-C, a kill, a crash) resumes where it stopped.

The pieces here — :class:`Manifest`, :class:`PlanBook`, :func:`render_item` — are shared by every
engine: the local loop below and the Ray engine (:mod:`rpg.batch_ray`) write the same records
and the same files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from rpg.models import GenerationRequest, GenerationResult, RegionPlan

if TYPE_CHECKING:
    from rpg.orchestrator import RPG
    from rpg.planners.base import Planner

__all__ = [
    "MANIFEST_NAME",
    "BatchItem",
    "BatchReport",
    "DrawnSeeds",
    "Manifest",
    "PlanBook",
    "expand_requests",
    "read_manifest",
    "read_requests",
    "render_item",
    "request_key",
    "run_batch",
]

MANIFEST_NAME = "manifest.jsonl"

#: The line key that carries options for the line's planner (``model``, ``base_url``, ``host``).
PLANNER_OPTIONS = "planner_options"

_PART_SUFFIX = ".png.part"


def request_key(
    request: GenerationRequest, planner_options: Mapping[str, Any] | None = None
) -> str:
    """The resume key of one item: a hash of the whole request and the planner's options.

    Every request field takes part, so a field added to the model later changes the key too;
    two items share a key only if they would render the same images.
    """
    payload: dict[str, Any] = {"request": request.model_dump(mode="json")}
    if planner_options:
        payload[PLANNER_OPTIONS] = dict(planner_options)
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BatchItem:
    """One image job: a validated request (or the error that stopped it) and where it came from."""

    line: int
    request: GenerationRequest | None
    error: str | None = None
    planner_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None  # of an invalid item, to tell its seeds apart
    #: For a request whose seed was drawn (the line named none): its key without the seed, by
    #: which :class:`DrawnSeeds` finds the same seed again when the batch resumes.
    unseeded: str | None = None

    @property
    def key(self) -> str:
        if self.request is None:
            return f"line-{self.line}" if self.seed is None else f"line-{self.line}-{self.seed}"
        return request_key(self.request, self.planner_options)

    @property
    def stem(self) -> str:
        if self.request is None:
            return f"{self.line:04d}-invalid"
        words = re.sub(r"[^a-z0-9]+", "-", self.request.prompt.lower()).strip("-")[:40].strip("-")
        return f"{self.line:04d}-{words or 'image'}-seed{self.request.seed}"

    def with_plan(self, plan: RegionPlan) -> BatchItem:
        """This item with ``plan`` filled in (its key changes with it)."""
        if self.request is None:
            return self
        return replace(self, request=self.request.model_copy(update={"plan": plan}))


@dataclass
class BatchReport:
    """What a batch run did: counts, and the manifest records written in this run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    plans_made: int = 0
    seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images(self) -> int:
        """Images written in this run."""
        return sum(len(r.get("files", [])) for r in self.records if r.get("status") == "done")

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the terminal: counts, time and throughput."""
        plans = f"{self.plans_made} plan{'s' if self.plans_made != 1 else ''} made"
        return (
            f"{self.done} done, {self.skipped} already done, {self.failed} failed, {plans}; "
            f"{self.images} image{'s' if self.images != 1 else ''} in {self.seconds:.1f} s "
            f"({self.images_per_minute:.1f}/min)"
        )

    def add(self, record: dict[str, Any]) -> None:
        """Count one manifest record written in this run."""
        self.records.append(record)
        if record.get("status") == "done":
            self.done += 1
        else:
            self.failed += 1


def read_requests(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any] | str]]:
    """Lines of a JSONL file as ``(line_number, object)``, or ``(line_number, error)``.

    Blank lines and ``#`` comments are skipped; a line that is not a JSON object is reported,
    not raised, so one bad line does not stop a batch.
    """
    text = Path(path).read_text(encoding="utf-8")
    return list(parse_lines(text))


def parse_lines(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """The requests in the text of a JSONL file, numbered from 1, as :func:`read_requests`."""
    for number, line in enumerate(text.splitlines(), start=1):
        value = parse_line(number, line)
        if value is not None:
            yield number, value


def parse_line(number: int, line: str) -> dict[str, Any] | str | None:
    """One line of a requests file: its object, its error message, or ``None`` (blank, comment)."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as exc:
        return f"line {number} is not valid JSON: {exc.msg}"
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        return f"line {number} must be a JSON object or a prompt string"
    return value


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'request'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def _line_planner_options(
    value: dict[str, Any], base: dict[str, Any], number: int
) -> dict[str, Any] | str:
    """The planner options of one line, or an error message.

    A line's options are merged over the defaults' options when the line uses the default
    planner; a line that names another planner gets only its own options (the defaults' options
    were meant for the default planner).
    """
    own = value.get(PLANNER_OPTIONS, {})
    if own is None:
        own = {}
    if not isinstance(own, dict):
        return f'line {number}: {PLANNER_OPTIONS} must be a JSON object, e.g. {{"model": "…"}}'
    inherited = base.get(PLANNER_OPTIONS) or {}
    same_planner = "planner" not in value or value["planner"] == base.get("planner")
    return {**inherited, **own} if same_planner else dict(own)


class DrawnSeeds:
    """Seeds for lines that name none, as ``rpg generate`` picks them: random, and recorded.

    Each such seed is drawn from a random salt kept in the output folder (``.rpg-seeds``,
    written when the batch starts) and the item's key without the seed, so a resumed batch
    draws the same seed again, also for an item whose image was written but not yet recorded
    when the batch was killed. The seed is recorded in the item's manifest record (with the
    key without the seed, ``"unseeded"``) and in its PNG; a seed found there is used as is.
    Without an output folder every draw is simply random.
    """

    SALT_NAME = ".rpg-seeds"

    def __init__(self, out_dir: str | os.PathLike[str] | None = None) -> None:
        self.seeds: dict[str, int] = {}
        self.salt = secrets.token_hex(16)
        if out_dir is None:
            return
        folder = Path(out_dir)
        salt_file = folder / self.SALT_NAME
        if salt_file.is_file():
            self.salt = salt_file.read_text(encoding="utf-8").strip() or self.salt
        else:
            folder.mkdir(parents=True, exist_ok=True)
            salt_file.write_text(self.salt + "\n", encoding="utf-8")
        for record in read_manifest(folder).values():
            unseeded, seed = record.get("unseeded"), record.get("seed")
            if isinstance(unseeded, str) and isinstance(seed, int):
                self.seeds.setdefault(unseeded, seed)

    def seed_for(self, unseeded: str) -> int:
        """The seed recorded for ``unseeded``, else the one this batch's salt gives it."""
        if unseeded not in self.seeds:
            digest = hashlib.sha256(f"{self.salt}:{unseeded}".encode()).digest()
            self.seeds[unseeded] = int.from_bytes(digest[:4], "big") % 2**31
        return self.seeds[unseeded]


def expand_requests(
    lines: Iterable[tuple[int, dict[str, Any] | str]],
    *,
    defaults: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    drawn: DrawnSeeds | None = None,
) -> list[BatchItem]:
    """Merge each line over ``defaults`` and expand it over ``seeds`` into validated items.

    ``seeds`` (``--seeds``) replace every line's seed; without them a line's own ``seed`` is
    kept, then the defaults' ``seed``; a line with none gets a seed from ``drawn`` (random,
    recorded, the same on resume: see :class:`DrawnSeeds`), or 0 when ``drawn`` is ``None``.
    A line (or ``defaults``) may carry ``planner_options``: keyword options for its planner.
    """
    base = dict(defaults or {})
    items: list[BatchItem] = []
    for number, value in lines:
        items.extend(expand_line(number, value, base, seeds, drawn=drawn))
    return items


def expand_line(
    number: int,
    value: dict[str, Any] | str,
    defaults: Mapping[str, Any],
    seeds: Sequence[int] | None = None,
    *,
    drawn: DrawnSeeds | None = None,
) -> list[BatchItem]:
    """The items of one line (see :func:`expand_requests`): one per seed, or its error."""
    if isinstance(value, str):
        return [BatchItem(line=number, request=None, error=value)]
    base = dict(defaults)
    options = _line_planner_options(value, base, number)
    if isinstance(options, str):
        return [BatchItem(line=number, request=None, error=options)]
    merged = {**base, **value}
    merged.pop(PLANNER_OPTIONS, None)
    own_seed = merged.get("seed")
    unseeded: str | None = None
    if not seeds and own_seed is None and drawn is not None:
        try:
            # the model is left out: the batch fills it in (Ray: after reading), and a batch
            # resumed with another --model keeps the seeds it drew
            request = GenerationRequest.model_validate({**merged, "seed": None, "model": None})
        except ValidationError as exc:
            return [
                BatchItem(
                    line=number, request=None, error=f"line {number}: {_validation_message(exc)}"
                )
            ]
        unseeded = request_key(request, options)
        own_seed = drawn.seed_for(unseeded)
    line_seeds: Sequence[int | None] = (
        list(seeds) if seeds else [own_seed if own_seed is not None else 0]
    )
    items: list[BatchItem] = []
    for seed in line_seeds:
        try:
            request = GenerationRequest.model_validate({**merged, "seed": seed})
        except ValidationError as exc:
            message = f"line {number}: {_validation_message(exc)}"
            items.append(BatchItem(line=number, request=None, error=message, seed=seed))
            continue
        items.append(
            BatchItem(line=number, request=request, planner_options=options, unseeded=unseeded)
        )
    return items


# ----------------------------------------------------------------------------- the manifest


class Manifest:
    """``manifest.jsonl`` in an output folder: the latest record per item, appended durably.

    Opening it repairs a torn last line left by a killed writer (the fragment stays as a line of
    its own that readers skip), so the next record starts on a fresh line instead of being
    glued to the fragment and lost.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.records = read_manifest(self.out_dir)
        self._end_torn_line()

    def _end_torn_line(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())

    def is_finished(self, key: str) -> bool:
        """Whether ``key`` is recorded as done and all its files are still there."""
        record = self.records.get(key)
        if not record or record.get("status") != "done":
            return False
        return all((self.out_dir / name).is_file() for name in record.get("files", []))

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it, so a kill right after loses nothing."""
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records[record["key"]] = record


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The latest record per item key; torn lines from a killed run are ignored."""
    path = Path(out_dir) / MANIFEST_NAME
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "key" in record:
            records[record["key"]] = record
    return records


def remove_partial_files(out_dir: str | os.PathLike[str]) -> int:
    """Delete temporary ``.png.part`` files a killed run left behind; returns how many."""
    removed = 0
    for part in Path(out_dir).glob(f".*{_PART_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed += 1
    return removed


# ----------------------------------------------------------------------------- planning


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


# ----------------------------------------------------------------------------- rendering


def worker_name() -> str:
    """``host:pid`` of the process rendering, as recorded in the manifest."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _atomic_save(result: GenerationResult, index: int, target: Path) -> None:
    """Write image ``index`` under a temporary name, fsync, then rename: never a partial PNG.

    The file gets the permissions a normal ``open`` gives (0666 less the umask).
    """
    from rpg.metadata import save_png

    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}{_PART_SUFFIX}")
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


# ----------------------------------------------------------------------------- the local engine


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


class BatchProgress:
    """A progress bar over items that shows done, failed and images per minute."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        import sys

        self._bar: Any = None
        self._started = time.perf_counter()
        self.done = self.failed = 0
        self.total = total
        # Without a terminal (a log file, a pipe) a line at every tenth of the items instead.
        self._lines = enabled and not sys.stderr.isatty()
        if enabled and not self._lines:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="batch", unit="item")

    @property
    def per_minute(self) -> float:
        elapsed = time.perf_counter() - self._started
        return 60.0 * self.done / elapsed if elapsed > 0 else 0.0

    def update(self, record: dict[str, Any]) -> None:
        if record.get("status") == "done":
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.set_postfix(
                done=self.done, failed=self.failed, per_min=f"{self.per_minute:.1f}", refresh=False
            )
            self._bar.update(1)
        count = self.done + self.failed
        if self._lines and (count == self.total or count % max(1, -(-self.total // 10)) == 0):
            import sys

            print(
                f"batch: {count}/{self.total} items ({self.failed} failed, "
                f"{self.per_minute:.1f}/min)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def record_all(
    records: Iterable[dict[str, Any]],
    manifest: Manifest,
    report: BatchReport,
    bar: BatchProgress,
) -> None:
    """Write each record as it comes (the one writer of the manifest), counting and showing it."""
    started = time.perf_counter()
    try:
        for record in records:
            manifest.append(record)
            report.add(record)
            bar.update(record)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started


def plan_item(book: PlanBook, item: BatchItem) -> BatchItem | dict[str, Any]:
    """``item`` with its plan filled in, or its failure record when its planner fails."""
    started = time.perf_counter()
    try:
        return book.plan_for(item)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return failure_record(item, exc, time.perf_counter() - started)


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
