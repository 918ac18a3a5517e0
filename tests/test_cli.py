"""The ``rpg`` command: plan, layout, plugins, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rpg.cli import main
from rpg.models import PlanResult, RegionPlan


def test_hand_written_plan_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["plan", "--split-ratio", "1,1,1;1,1,1", "--prompts", "a BREAK b BREAK c BREAK d", "--json"]
    )
    assert code == 0
    result = PlanResult.model_validate_json(capsys.readouterr().out)
    assert [len(row.regions) for row in result.plan.rows] == [2, 2]
    assert result.plan.prompts == ["a", "b", "c", "d"]


def test_hand_written_plan_table_shows_boxes_and_base(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--split-ratio", "1,1", "--prompts", "cat BREAK dog"]
    assert main([*args, "--base-prompt", "two pets", "--base-ratio", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "base prompt: two pets (ratio 0.4)" in out
    assert "0.50,0.00 - 1.00,1.00  dog" in out


def test_mismatch_exits_non_zero_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--split-ratio", "1,1", "--prompts", "a BREAK b BREAK c"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "has 2 regions but 3 prompts were given" in err


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "plan", "--split-ratio", "1,0", "--prompts", "a BREAK b"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_validation_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--split-ratio", "1,1", "--prompts", "a BREAK b", "--base-ratio", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--base-ratio" in err


def test_plan_without_prompt_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 2
    assert "give a PROMPT" in capsys.readouterr().err


def test_layout_draws_the_plan(tmp_path: Path) -> None:
    plan = RegionPlan.from_split_ratio(
        "1;1,1,1", "sky BREAK cat BREAK dog", base_prompt="a park", base_ratio=0.3
    )
    src = tmp_path / "plan.json"
    src.write_text(plan.model_dump_json())
    out = tmp_path / "layout.png"
    assert main(["layout", str(src), "--out", str(out), "--size", "400x300"]) == 0
    image = Image.open(out).convert("RGB")
    assert image.width == 400
    assert image.height > 300  # caption strip for the base prompt
    # each region is tinted in its own colour: sample the centre of every box
    centres = [
        image.getpixel((int((x0 + x1) / 2 * 400), int(y1 * 300) - 5))
        for x0, _, x1, y1 in plan.boxes()
    ]
    assert len(set(centres)) == 3


def test_layout_reports_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"rows": []}))
    assert main(["layout", str(bad)]) == 1
    assert "rows" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_default_planner_falls_back_to_rules_offline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # discard port: nothing answers
    prompt = "From left to right, a red apple, a blue mug and a yellow banana on a wooden table"
    assert main(["plan", prompt, "--json"]) == 0
    result = PlanResult.model_validate_json(capsys.readouterr().out)
    assert result.planner == "rules"
    assert len(result.plan.rows) == 1
    prompts = result.plan.prompts
    assert len(prompts) == 3
    for prompt_text, thing in zip(prompts, ["apple", "mug", "banana"], strict=True):
        assert thing in prompt_text
