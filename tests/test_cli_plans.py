"""Degenerate plans are errors or warnings, never silent: non-finite ratios, regions smaller than
a latent cell, prompts longer than the text encoder's window."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import rpg
from rpg.attention.spec import RegionalLayout
from rpg.cli import main
from rpg.layout import parse_split_ratio
from rpg.models import Region, RegionPlan, Row

LONG = ", ".join(f"a tiny detail number {i}" for i in range(40))  # ~200 tokens


@pytest.mark.parametrize("text", ["1,inf", "inf", "1;inf,1", "1,nan"])
def test_non_finite_ratios_say_so(text: str) -> None:
    with pytest.raises(rpg.SplitRatioError, match="not a finite number"):
        parse_split_ratio(text)


@pytest.mark.parametrize("text", ["1e308,1e308", "1e308;1e308", "1;1,1e308,1e308"])
def test_ratios_whose_sum_overflows_are_errors(text: str) -> None:
    with pytest.raises(rpg.SplitRatioError, match="add up to more than a float can hold"):
        parse_split_ratio(text)


def test_models_refuse_non_finite_and_overflowing_weights() -> None:
    with pytest.raises(ValidationError):
        Region(prompt="a", width=float("inf"))
    with pytest.raises(ValidationError):
        Row(height=float("nan"), regions=[Region(prompt="a")])
    with pytest.raises(ValidationError, match="add up to more than a float can hold"):
        Row(regions=[Region(prompt="a", width=1e308), Region(prompt="b", width=1e308)])
    row = Row(height=1e308, regions=[Region(prompt="a")])
    with pytest.raises(ValidationError, match="add up to more than a float can hold"):
        RegionPlan(rows=[row, row])
    plan = RegionPlan(rows=[Row(regions=[Region(prompt="a", width=1e300), Region(prompt="b")])])
    assert plan.boxes()[0][2] == pytest.approx(1.0)  # large but finite is still a plan


def test_cli_refuses_overflowing_split_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--split-ratio", "1e308,1e308", "--prompts", "a BREAK b"]) == 2
    assert "add up to more than a float can hold" in capsys.readouterr().err


def test_region_smaller_than_a_latent_cell_is_an_error_with_a_way_out() -> None:
    plan = RegionPlan.from_split_ratio(",".join(["1"] * 1000), [f"p{i}" for i in range(1000)])
    with pytest.raises(rpg.SplitRatioError, match="merge the smallest regions") as info:
        RegionalLayout.from_plan(plan, 64, 64)
    assert "region 1 of 1000" in str(info.value)
    assert "0.008 latent cells wide on a 64x64 image" in str(info.value)

    narrow = RegionPlan.from_split_ratio("1,30", ["a thin pole", "a field"])
    with pytest.raises(rpg.SplitRatioError, match=r"render at 248x64 or larger") as info:
        RegionalLayout.from_plan(narrow, 64, 64)
    assert "region 1 of 2" in str(info.value) and "wide" in str(info.value)
    RegionalLayout.from_plan(narrow, 64, 248)  # the size it named works


def test_cli_refuses_a_plan_too_fine_for_the_size_before_denoising(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = RegionPlan.from_split_ratio("1;1;1;1;1;1;1;1;1;1", [f"band {i}" for i in range(10)])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    out = tmp_path / "x.png"
    code = main(
        ["generate", "bands", "--plan", str(plan_file), "--size", "64x64", "--out", str(out)]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "tall on a 64x64 image" in err and "render at 64x80 or larger" in err
    assert not out.exists()


def test_long_prompt_is_announced_once_naming_the_region(
    tiny_rpg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", LONG], base_prompt="two " + LONG)
    with caplog.at_level(logging.WARNING, logger="rpg"):
        tiny_rpg.backbone.encode(plan, "", guidance=True)
        tiny_rpg.backbone.encode(plan, "", guidance=True)  # the same prompts: said once
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("the base prompt (") and "windows" in messages[0]
    assert messages[1].startswith("region 2 (") and "77-token window" in messages[1]


def test_cli_long_prompt_warning_and_no_transformers_noise(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", LONG])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    out = tmp_path / "x.png"
    args = ["generate", "x", "--plan", str(plan_file), "--steps", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "rpg generate: warning: region 2 (" in err
    assert "indexing errors" not in err
