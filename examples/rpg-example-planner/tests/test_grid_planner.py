"""The example planner: its plans, its errors, and that rpg finds it as an installed plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rpg_example_planner import GridPlanner

import rpg
from rpg import plugins


def test_four_things_make_two_rows_of_two_with_the_setting_in_each() -> None:
    result = GridPlanner().plan("a cat, a dog, a fox and an owl in a snowy forest")
    plan = result.plan
    assert plan.to_split_ratio() == "1,1,1;1,1,1"
    assert plan.prompts == [
        "a cat in a snowy forest",
        "a dog in a snowy forest",
        "a fox in a snowy forest",
        "an owl in a snowy forest",
    ]
    assert plan.base_prompt == "a cat, a dog, a fox and an owl in a snowy forest"
    assert [e.name for e in result.recaption.entities] == ["a cat", "a dog", "a fox", "an owl"]
    assert result.planner == "example-grid"


def test_max_columns_wraps_the_list_into_more_rows() -> None:
    plan = GridPlanner(max_columns=2, base_ratio=0).plan("a, b, c, d, e").plan
    assert [len(row.regions) for row in plan.rows] == [2, 2, 1]
    assert plan.base_prompt is None


def test_one_thing_is_one_full_canvas_region_without_a_base_prompt() -> None:
    plan = GridPlanner().plan("a lighthouse on a cliff").plan
    assert plan.prompts == ["a lighthouse on a cliff"]
    assert plan.base_prompt is None


@pytest.mark.parametrize(
    ("prompt", "image", "message"),
    [("  ", None, "empty"), ("a, b", object(), "cannot read images")],
)
def test_bad_input_is_a_planner_error(prompt: str, image: object, message: str) -> None:
    with pytest.raises(rpg.PlannerError, match=message):
        GridPlanner().plan(prompt, image=image)  # type: ignore[arg-type]


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(rpg.ConfigurationError, match="max_columns"):
        GridPlanner(max_columns=0)
    with pytest.raises(rpg.ConfigurationError, match="column count"):
        rpg.create_planner("example-grid", model="wide")


def test_the_installed_distribution_registers_the_planner() -> None:
    plugins.reset()
    entry = plugins.planner_registry().get("example-grid")
    assert entry.source.startswith("rpg-example-planner ")
    planner = rpg.create_planner("example-grid", model="2", cache=False)
    assert isinstance(planner, GridPlanner) and planner.max_columns == 2


def _rpg(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "rpg", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rpg_plugins_lists_it_with_its_distribution_name() -> None:
    line = next(x for x in _rpg("plugins").splitlines() if "example-grid" in x)
    assert "rpg-example-planner 0.1.0" in line


def test_rpg_plan_uses_it_from_the_command_line() -> None:
    out = _rpg("plan", "--planner", "example-grid", "--json", "a red apple, a blue mug and a pear")
    result = rpg.PlanResult.model_validate_json(out)
    assert result.planner == "example-grid"
    assert result.plan.to_split_ratio() == "1,1,1;1"
