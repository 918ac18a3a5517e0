"""Render many requests with one loaded model: shared plans, a resumable manifest, atomic files.

A batch is a JSONL file of (partial) :class:`~rpg.models.GenerationRequest` objects. Every line is
expanded over the seeds, planned once per distinct prompt (or given one shared plan), rendered,
and recorded in ``manifest.jsonl``. Running the same batch again skips what is already done, so an
interrupted run (Ctrl-C, a kill, a crash) resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.models import GenerationRequest, GenerationResult, RegionPlan

if TYPE_CHECKING:
    from rpg.orchestrator import RPG

__all__ = [
    "MANIFEST_NAME",
    "BatchItem",
    "BatchReport",
    "expand_requests",
    "read_manifest",
    "read_requests",
    "run_batch",
]

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class BatchItem:
    """One image job: a validated request (or the error that stopped it) and where it came from."""

    key: str
    line: int
    request: GenerationRequest | None
    error: str | None = None

    @property
    def stem(self) -> str:
        if self.request is None:
            return f"{self.line:04d}-invalid"
        words = re.sub(r"[^a-z0-9]+", "-", self.request.prompt.lower()).strip("-")[:40].strip("-")
        return f"{self.line:04d}-{words or 'image'}-seed{self.request.seed}"


@dataclass
class BatchReport:
    """What a batch run did: counts, and the manifest records written in this run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    plans_made: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def read_requests(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any] | str]]:
    """Lines of a JSONL file as ``(line_number, object)``, or ``(line_number, error)``.

    Blank lines and ``#`` comments are skipped; a line that is not a JSON object is reported,
    not raised, so one bad line does not stop a batch.
    """
    items: list[tuple[int, dict[str, Any] | str]] = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            items.append((number, f"line {number} is not valid JSON: {exc.msg}"))
            continue
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            items.append((number, f"line {number} must be a JSON object or a prompt string"))
            continue
        items.append((number, value))
    return items


def _key(request: GenerationRequest) -> str:
    # Without controls the key is what it was before requests had them, so manifests resume.
    exclude = {"num_images"} if request.controls else {"num_images", "controls"}
    payload = request.model_dump_json(exclude=exclude)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'request'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


def expand_requests(
    lines: Iterable[tuple[int, dict[str, Any] | str]],
    *,
    defaults: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[BatchItem]:
    """Merge each line over ``defaults`` and expand it over ``seeds`` into validated items.

    A line's own ``seed`` is used when no seeds are given; with neither, seed 0 keeps the batch
    reproducible and resumable.
    """
    base = dict(defaults or {})
    items: list[BatchItem] = []
    for number, value in lines:
        if isinstance(value, str):
            items.append(BatchItem(key=f"line-{number}", line=number, request=None, error=value))
            continue
        merged = {**base, **value}
        line_seeds: Sequence[int | None] = (
            list(seeds) if seeds else [merged.get("seed") if merged.get("seed") is not None else 0]
        )
        for seed in line_seeds:
            try:
                request = GenerationRequest.model_validate({**merged, "seed": seed})
            except ValidationError as exc:
                message = f"line {number}: {_validation_message(exc)}"
                items.append(
                    BatchItem(key=f"line-{number}-{seed}", line=number, request=None, error=message)
                )
                continue
            items.append(BatchItem(key=_key(request), line=number, request=request))
    return items


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The latest record per item key; a torn last line from a killed run is ignored."""
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


def _is_finished(record: dict[str, Any] | None, out_dir: Path) -> bool:
    if not record or record.get("status") != "done":
        return False
    return all((out_dir / name).is_file() for name in record.get("files", []))


def _append(out_dir: Path, record: dict[str, Any]) -> None:
    with (out_dir / MANIFEST_NAME).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_save(result: GenerationResult, index: int, target: Path) -> None:
    """Write image ``index`` under a temporary name, then rename: a kill leaves no partial PNG."""
    from rpg.metadata import save_png

    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".png.part", dir=target.parent)
    os.close(fd)
    try:
        save_png(
            result.images[index],
            tmp,
            result.request,
            result.plan,
            index=index,
            control_images=result.control_images,
        )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _progress(items: list[BatchItem], enabled: bool) -> Iterator[BatchItem]:
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc="batch", unit="item")


def run_batch(
    pipe: RPG,
    items: Sequence[BatchItem],
    out_dir: str | os.PathLike[str],
    *,
    plan: RegionPlan | None = None,
    progress: bool = True,
) -> BatchReport:
    """Render ``items`` into ``out_dir``, skipping items the manifest records as done.

    Each distinct prompt is planned once (or ``plan`` is used for every item). A failing item is
    recorded with its error and the batch goes on; only KeyboardInterrupt stops it, after which
    the next run resumes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(out)
    plans: dict[str, RegionPlan] = {}
    report = BatchReport()
    for item in _progress(list(items), progress):
        if _is_finished(previous.get(item.key), out):
            report.skipped += 1
            continue
        started = time.perf_counter()
        record: dict[str, Any] = {"key": item.key, "line": item.line, "files": []}
        try:
            if item.request is None:
                raise ValueError(item.error or "invalid request")
            request = item.request
            record.update(prompt=request.prompt, seed=request.seed)
            if request.plan is None:
                chosen = plan or plans.get(request.prompt)
                if chosen is None:
                    chosen = plans[request.prompt] = pipe.plan(request.prompt).plan
                    report.plans_made += 1
                request = request.model_copy(update={"plan": chosen})
            result = pipe.generate(request)
            files = []
            for index in range(len(result.images)):
                suffix = f"-{index}" if len(result.images) > 1 else ""
                name = f"{item.stem}{suffix}.png"
                _atomic_save(result, index, out / name)
                files.append(name)
            record.update(status="done", error=None, files=files)
            report.done += 1
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            record.update(status="error", error=f"{type(exc).__name__}: {exc}")
            report.failed += 1
        record["seconds"] = round(time.perf_counter() - started, 3)
        _append(out, record)
        report.records.append(record)
    return report
