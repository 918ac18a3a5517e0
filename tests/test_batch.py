"""Batch rendering: shared plans, bad lines, resume after a crash, atomic files."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rpg import plugins
from rpg.batch import (
    MANIFEST_NAME,
    expand_requests,
    read_manifest,
    read_requests,
    request_key,
    run_batch,
)
from rpg.metadata import load_request
from rpg.models import GenerationRequest, PlanResult, RegionPlan
from rpg.orchestrator import RPG
from rpg.planners.rules import RulesPlanner

DEFAULTS = {"steps": 2, "width": 64, "height": 64}


class CountingPlanner:
    """The rules planner, counting how often each prompt is planned."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._rules = RulesPlanner()

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        self.calls.append(prompt)
        return self._rules.plan(prompt)


class CrashingRPG:
    """Delegates to a real RPG but raises KeyboardInterrupt on the N-th render (like Ctrl-C)."""

    def __init__(self, inner: RPG, crash_on: int | None) -> None:
        self.inner = inner
        self.crash_on = crash_on
        self.renders = 0

    def plan(self, prompt: str) -> PlanResult:
        return self.inner.plan(prompt)

    def get_planner(self, name: str | None = None) -> Any:
        return self.inner.get_planner(name)

    @property
    def planner_name(self) -> str:
        return self.inner.planner_name

    def generate(self, request: Any) -> Any:
        self.renders += 1
        if self.renders == self.crash_on:
            raise KeyboardInterrupt
        return self.inner.generate(request)


def _write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def counting_rpg(tiny_rpg: RPG) -> tuple[RPG, CountingPlanner]:
    planner = CountingPlanner()
    return RPG(tiny_rpg.backbone, planner=planner), planner


def test_batch_writes_every_image_and_plans_each_prompt_once(
    tmp_path: Path, counting_rpg: tuple[RPG, CountingPlanner]
) -> None:
    pipe, planner = counting_rpg
    src = _write_lines(
        tmp_path / "requests.jsonl",
        [
            {"prompt": "a red cat on the left and a blue dog on the right"},
            json.dumps("a castle at the top and a lake at the bottom"),  # a bare prompt string
            {"prompt": "a red cat on the left and a blue dog on the right", "steps": 3},
        ],
    )
    items = expand_requests(read_requests(src), defaults=DEFAULTS, seeds=[1, 2])
    assert len(items) == 6
    report = run_batch(pipe, items, tmp_path / "out", progress=False)

    assert (report.done, report.failed, report.skipped) == (6, 0, 0)
    assert len(planner.calls) == 2 == len(set(planner.calls))
    manifest = read_manifest(tmp_path / "out")
    assert {r["status"] for r in manifest.values()} == {"done"}
    files = [name for r in manifest.values() for name in r["files"]]
    assert len(set(files)) == 6
    for name in files:
        request = load_request(tmp_path / "out" / name)
        assert request.seed in (1, 2)
        assert request.plan is not None
    assert not list((tmp_path / "out").glob("*.part"))


def test_bad_lines_are_recorded_and_the_batch_goes_on(
    tmp_path: Path, counting_rpg: tuple[RPG, CountingPlanner]
) -> None:
    pipe, _ = counting_rpg
    src = _write_lines(
        tmp_path / "requests.jsonl",
        ["{not json", {"prompt": "a cat", "width": 100}, {"prompt": "a dog"}, "[1, 2]"],
    )
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    report = run_batch(pipe, items, tmp_path / "out", progress=False)
    assert (report.done, report.failed) == (1, 3)
    errors = {r["line"]: r["error"] for r in report.records if r["status"] == "error"}
    assert "not valid JSON" in errors[1]
    assert "multiple of 8" in errors[2]
    assert "JSON object" in errors[4]


def test_shared_plan_is_used_for_every_item(
    tmp_path: Path, counting_rpg: tuple[RPG, CountingPlanner]
) -> None:
    pipe, planner = counting_rpg
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    run_batch(pipe, items, tmp_path / "out", plan=plan, progress=False)
    assert planner.calls == []
    for record in read_manifest(tmp_path / "out").values():
        assert load_request(tmp_path / "out" / record["files"][0]).plan == plan


def test_interrupted_batch_resumes_without_redoing_finished_items(
    tmp_path: Path, tiny_rpg: RPG
) -> None:
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": f"a cat number {i}"} for i in range(4)])
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    out = tmp_path / "out"

    first = CrashingRPG(tiny_rpg, crash_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_batch(first, items, out, progress=False)
    done_before = {k for k, r in read_manifest(out).items() if r["status"] == "done"}
    assert len(done_before) == 2
    assert len(list(out.glob("*.png"))) == 2
    assert not list(out.glob("*.part"))  # the interrupted image left nothing behind

    # a kill during a manifest write leaves a torn last line; it must not break the resume
    with (out / MANIFEST_NAME).open("a") as fh:
        fh.write('{"key": "torn')

    second = CrashingRPG(tiny_rpg, crash_on=None)
    report = run_batch(second, items, out, progress=False)
    assert second.renders == 2
    assert (report.skipped, report.done) == (2, 2)
    assert len(list(out.glob("*.png"))) == 4


def test_a_finished_item_whose_file_was_deleted_is_rendered_again(
    tmp_path: Path, tiny_rpg: RPG
) -> None:
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat"}, {"prompt": "a dog"}])
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    out = tmp_path / "out"
    run_batch(tiny_rpg, items, out, progress=False)
    victim = sorted(out.glob("*.png"))[0]
    victim.unlink()
    again = CrashingRPG(tiny_rpg, crash_on=None)
    run_batch(again, items, out, progress=False)
    assert again.renders == 1
    assert victim.exists()


# ----------------------------------------------------------------------------- correctness


class RecordingPlanner:
    """A registered planner that remembers the options it was made with and what it planned."""

    made: ClassVar[list[dict[str, Any]]] = []
    planned: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.name = "recording"
        RecordingPlanner.made.append(options)

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        RecordingPlanner.planned.append((json.dumps(self.options, sort_keys=True), prompt))
        flavour = self.options.get("flavour", "plain")
        return RulesPlanner().plan(f"{prompt} in {flavour}")


@pytest.fixture
def recording_planner() -> Iterator[type[RecordingPlanner]]:
    plugins.reset()
    plugins.planner_registry().register("recording", RecordingPlanner)
    RecordingPlanner.made, RecordingPlanner.planned = [], []
    yield RecordingPlanner
    plugins.reset()


def test_a_lines_own_planner_is_used_instead_of_the_default(
    tmp_path: Path, counting_rpg: tuple[RPG, CountingPlanner], recording_planner: Any
) -> None:
    pipe, default = counting_rpg
    src = _write_lines(
        tmp_path / "r.jsonl", [{"prompt": "a cat", "planner": "recording"}, {"prompt": "a dog"}]
    )
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    report = run_batch(pipe, items, tmp_path / "out", progress=False)
    assert report.done == 2
    assert default.calls == ["a dog"]
    assert [prompt for _, prompt in recording_planner.planned] == ["a cat"]


def test_planner_options_reach_the_planner_and_plans_are_shared_per_options(
    tmp_path: Path, tiny_rpg: RPG, recording_planner: Any
) -> None:
    lines = [
        {"prompt": "a cat", "planner": "recording", "planner_options": {"flavour": "oil"}},
        {"prompt": "a cat", "planner": "recording", "planner_options": {"flavour": "ink"}},
        {
            "prompt": "a cat",
            "planner": "recording",
            "planner_options": {"flavour": "oil"},
            "steps": 3,
        },
        {"prompt": "a cat", "planner": "recording"},
    ]
    src = _write_lines(tmp_path / "r.jsonl", lines)
    items = expand_requests(read_requests(src), defaults=DEFAULTS, seeds=[1, 2])
    assert len({item.key for item in items}) == 8  # options are part of the resume key
    report = run_batch(tiny_rpg, items, tmp_path / "out", progress=False)
    assert (report.done, report.failed, report.plans_made) == (8, 0, 3)
    assert sorted(recording_planner.planned) == [
        ('{"flavour": "ink"}', "a cat"),
        ('{"flavour": "oil"}', "a cat"),
        ("{}", "a cat"),
    ]
    flavours = set()
    for record in read_manifest(tmp_path / "out").values():  # each line got its own options' plan
        plan = load_request(tmp_path / "out" / record["files"][0]).plan
        assert plan is not None
        flavours.add(plan.regions[0].prompt)
    assert len(flavours) == 3


def test_a_lines_planner_options_merge_over_the_defaults_for_the_same_planner() -> None:
    defaults = {"planner": "openai", "planner_options": {"base_url": "http://x/v1", "model": "a"}}
    lines: list[tuple[int, dict[str, Any] | str]] = [
        (1, {"prompt": "p", "planner_options": {"model": "b"}}),
        (2, {"prompt": "p", "planner": "ollama", "planner_options": {"host": "h"}}),
        (3, {"prompt": "p", "planner_options": "gpt"}),
    ]
    same, other, bad = expand_requests(lines, defaults=defaults)
    assert same.planner_options == {"base_url": "http://x/v1", "model": "b"}
    assert other.planner_options == {"host": "h"}
    assert bad.request is None and "planner_options must be a JSON object" in str(bad.error)


REQUEST_VARIANTS: dict[str, Any] = {
    "prompt": "another prompt",
    "plan": RegionPlan.from_split_ratio("1,1", ["a", "b"]),
    "planner": "rules",
    "model": "tiny-sdxl",
    "width": 128,
    "height": 128,
    "steps": 3,
    "guidance_scale": 2.0,
    "negative_prompt": "blurry",
    "seed": 9,
    "num_images": 2,
    "scheduler": "euler",
    "base_ratio": 0.5,
    "controls": [{"controlnet": "tiny-controlnet", "image": "edges.png"}],
    "options": {"image_attention": "region", "regional_steps": 0.5},
    "init_image": "start.png",
    "init_image_sha256": "0" * 64,
    "strength": 0.5,
    "hires": {"scale": 2},
    "loras": [("style.safetensors", 0.5)],
}


def test_the_resume_key_covers_every_request_field() -> None:
    # a field added to GenerationRequest must be listed here, and must change the key
    assert set(REQUEST_VARIANTS) == set(GenerationRequest.model_fields)
    base = GenerationRequest(prompt="a cat", seed=1, width=64, height=64, steps=2)
    keys = {request_key(base)}
    for name, value in REQUEST_VARIANTS.items():
        variant = GenerationRequest.model_validate({**base.model_dump(), name: value})
        assert getattr(variant, name) != getattr(base, name)
        keys.add(request_key(variant))
    assert len(keys) == len(REQUEST_VARIANTS) + 1
    assert request_key(base, {"model": "x"}) != request_key(base)


def test_changing_num_images_renders_again(tmp_path: Path, tiny_rpg: RPG) -> None:
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat"}])
    out = tmp_path / "out"
    run_batch(tiny_rpg, expand_requests(read_requests(src), defaults=DEFAULTS), out, progress=False)
    more = expand_requests(read_requests(src), defaults={**DEFAULTS, "num_images": 2})
    report = run_batch(tiny_rpg, more, out, progress=False)
    assert (report.done, report.skipped) == (1, 0)
    assert len(list(out.glob("*.png"))) == 3


def test_a_lines_own_seed_is_kept_unless_seeds_are_given() -> None:
    lines: list[tuple[int, dict[str, Any] | str]] = [
        (1, {"prompt": "a cat", "seed": 7}),
        (2, {"prompt": "a dog"}),
    ]
    kept = expand_requests(lines, defaults={"seed": 3})
    assert [i.request.seed for i in kept if i.request] == [7, 3]
    replaced = expand_requests(lines, defaults={"seed": 3}, seeds=[1, 2])
    assert [i.request.seed for i in replaced if i.request] == [1, 2, 1, 2]
    assert [i.request.seed for i in expand_requests([(2, {"prompt": "a dog"})]) if i.request] == [0]


def test_images_get_normal_permissions_and_are_synced_before_the_rename(
    tmp_path: Path, tiny_rpg: RPG, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync:" + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"replace:{src}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0o022)
    try:
        src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat"}])
        items = expand_requests(read_requests(src), defaults=DEFAULTS)
        run_batch(tiny_rpg, items, tmp_path / "out", progress=False)
    finally:
        os.umask(old)
    (png,) = (tmp_path / "out").glob("*.png")
    assert stat.S_IMODE(png.stat().st_mode) == 0o644
    (moved,) = [e.removeprefix("replace:") for e in events if e.startswith("replace:")]
    assert events.index(f"fsync:{moved}") < events.index(f"replace:{moved}")


def test_stale_part_files_are_removed_on_start(tmp_path: Path, tiny_rpg: RPG) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".0001-a-cat-seed0.1a2b3c4d.png.part"
    stale.write_bytes(b"\x89PNG half")
    keep = out / "notes.txt"
    keep.write_text("mine")
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat"}])
    run_batch(tiny_rpg, expand_requests(read_requests(src), defaults=DEFAULTS), out, progress=False)
    assert not stale.exists()
    assert keep.exists()


def test_identical_lines_render_once(tmp_path: Path, tiny_rpg: RPG) -> None:
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat"}, {"prompt": "a cat"}])
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    report = run_batch(tiny_rpg, items, tmp_path / "out", progress=False)
    assert (report.done, report.skipped) == (1, 1)
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_a_torn_last_manifest_line_does_not_swallow_the_next_record(
    tmp_path: Path, tiny_rpg: RPG
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text('{"key": "abc", "status": "done", "fi')  # a killed writer
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat"}])
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    run_batch(tiny_rpg, items, out, progress=False)
    assert read_manifest(out)[items[0].key]["status"] == "done"
    again = CrashingRPG(tiny_rpg, crash_on=None)
    assert run_batch(again, items, out, progress=False).skipped == 1
    assert again.renders == 0
