"""The requests of a batch: a JSONL file's lines, merged over defaults and expanded over seeds.

Each line of the file is a (partial) :class:`~rpg.models.GenerationRequest`, or a bare prompt
string; :func:`expand_requests` turns the lines into :class:`BatchItem` objects, one per seed,
each either a validated request or the error that stopped it (one bad line never stops a
batch). :func:`request_key` is the item's resume key, the same for every engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rpg.batch_manifest import read_manifest
from rpg.models import GenerationRequest, RegionPlan
from rpg.pydantic_errors import one_line

__all__ = [
    "PLANNER_OPTIONS",
    "BatchItem",
    "DrawnSeeds",
    "expand_line",
    "expand_requests",
    "parse_line",
    "parse_lines",
    "read_requests",
    "request_key",
]

#: The line key that carries options for the line's planner (``model``, ``base_url``, ``host``).
PLANNER_OPTIONS = "planner_options"


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
                    line=number,
                    request=None,
                    error=f"line {number}: {one_line(exc, fallback='request')}",
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
            message = f"line {number}: {one_line(exc, fallback='request')}"
            items.append(BatchItem(line=number, request=None, error=message, seed=seed))
            continue
        items.append(
            BatchItem(line=number, request=request, planner_options=options, unseeded=unseeded)
        )
    return items
