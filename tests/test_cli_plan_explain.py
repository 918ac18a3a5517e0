"""``rpg plan --explain``: which rule (or reply) produced the layout."""

from __future__ import annotations

import pytest

from rpg.cli import main
from rpg.models import PlanResult


def test_explain_names_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "a cat under a table", "--planner", "rules", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "rule: relation" in out
    assert '"under" (A below B)' in out
    assert "rows top to bottom [a table], [a cat]" in out


def test_explain_says_when_nothing_was_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "a lighthouse at dusk", "--planner", "rules", "--explain"]) == 0
    assert "rule: single" in capsys.readouterr().out


def test_explain_with_json_keeps_json_valid(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "a red book and a yellow vase", "--planner", "rules", "--json", "--explain"]
    assert main(args) == 0
    result = PlanResult.model_validate_json(capsys.readouterr().out)
    assert result.raw.startswith("rule: and\n")


def test_explain_hand_written_plan(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--split-ratio", "1,1", "--prompts", "a BREAK b", "--explain"]
    assert main(args) == 0
    assert "hand-written plan" in capsys.readouterr().out


def test_explain_a_canvas_from_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "a bird in the top left corner of a blue sky"
    assert main(["plan", prompt, "--planner", "rules", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "rule: corner" in out
    assert "[a bird] in box (0, 0, 0.4, 0.4), over the background [a blue sky]" in out
    assert main(["plan", prompt, "--planner", "rules", "--json"]) == 0
    plan = PlanResult.model_validate_json(capsys.readouterr().out).plan
    assert plan.is_canvas and plan.base_prompt == "a blue sky"
    assert [(x.prompt, x.box) for x in plan.layers] == [("a bird", (0.0, 0.0, 0.4, 0.4))]
