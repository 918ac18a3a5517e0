"""Batch rendering: shared plans, bad lines, resume after a crash, atomic files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rpg.batch import MANIFEST_NAME, expand_requests, read_manifest, read_requests, run_batch
from rpg.metadata import load_request
from rpg.models import PlanResult, RegionPlan
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
