"""What a batch leaves in its output folder and tells its user: ``manifest.jsonl``, the counts,
the progress bar.

The manifest holds the latest record of every item (appended and fsynced, one writer), so a run
that stops for any reason resumes where it stopped; :func:`remove_partial_files` clears the
temporary files of a write that was cut short. :func:`record_all` is the one loop that writes
records, for every engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_NAME",
    "PART_SUFFIX",
    "BatchProgress",
    "BatchReport",
    "Manifest",
    "read_manifest",
    "record_all",
    "remove_partial_files",
]

MANIFEST_NAME = "manifest.jsonl"

#: Suffix of the temporary files an image is written to before its atomic rename.
PART_SUFFIX = ".png.part"


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
    for part in Path(out_dir).glob(f".*{PART_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed += 1
    return removed


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
