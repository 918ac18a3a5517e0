"""One name per thing across subcommands; the old spellings still work for one release, warned."""

from __future__ import annotations

import pytest

from rpg.cli import build_parser, main


@pytest.mark.parametrize(
    ("command", "old", "new"),
    [
        ("plan", "--model", "--planner-model"),
        ("plan", "--host", "--ollama-host"),
        ("generate", "--host", "--ollama-host"),
        ("batch", "--host", "--ollama-host"),
        ("edit", "--host", "--ollama-host"),
    ],
)
def test_old_spelling_is_a_hidden_alias_that_warns(
    command: str, old: str, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    help_text = sub.format_help()
    assert new in help_text
    assert f"{old} " not in help_text.replace(f"{new} ", "")  # hidden
    base = {
        "plan": ["plan", "a cat"],
        "generate": ["generate", "a cat"],
        "batch": ["batch", "r.jsonl", "--out", "o"],
        "edit": ["edit", "x.png", "make it red"],
    }[command]
    old_args = parser.parse_args([*base, old, "VALUE"])
    err = capsys.readouterr().err
    assert f"{old} is deprecated" in err and f"use {new}" in err
    new_args = parser.parse_args([*base, new, "VALUE"])
    assert capsys.readouterr().err == ""
    dest = new.lstrip("-").replace("-", "_")
    assert getattr(old_args, dest) == getattr(new_args, dest) == "VALUE"


def test_plan_model_alias_reaches_the_planner(capsys: pytest.CaptureFixture[str]) -> None:
    """``rpg plan --model`` still sets the planner's model (the rules planner refuses one)."""
    assert main(["plan", "a cat", "--planner", "rules", "--model", "gpt-4o-mini"]) == 1
    err = capsys.readouterr().err
    assert "--model is deprecated" in err
    assert "the rules planner takes no option 'model'" in err
    assert main(["plan", "a cat", "--planner", "rules", "--planner-model", "gpt-4o-mini"]) == 1
    err = capsys.readouterr().err
    assert "deprecated" not in err and "the rules planner takes no option 'model'" in err
