"""The offline, rule-based planner."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import rpg
from rpg.errors import ConfigurationError, PlannerError
from rpg.planners.rules import RulesPlanner


@pytest.fixture
def planner() -> RulesPlanner:
    return RulesPlanner()


def _grid(result: rpg.PlanResult) -> list[int]:
    """Regions per row, top to bottom."""
    return [len(row.regions) for row in result.plan.rows]


def test_issue_example_left_to_right(planner: RulesPlanner) -> None:
    result = planner.plan(
        "From left to right, a red apple, a blue mug and a yellow banana on a wooden table"
    )
    assert _grid(result) == [3]
    prompts = result.plan.prompts
    for prompt, thing in zip(prompts, ("red apple", "blue mug", "yellow banana"), strict=True):
        assert thing in prompt
        assert "wooden table" in prompt
    # each region names its own object only
    assert "mug" not in prompts[0] and "apple" not in prompts[1]
    base = result.plan.base_prompt
    assert base is not None and "wooden table" in base
    assert all(t in base for t in ("apple", "mug", "banana"))
    assert 0 < result.plan.base_ratio < 1
    assert result.planner == "rules"
    assert result.seconds >= 0
    assert [e.name for e in result.recaption.entities] == ["red apple", "blue mug", "yellow banana"]


def test_right_to_left_reverses_order(planner: RulesPlanner) -> None:
    prompts = planner.plan("from right to left: a cat, a dog").plan.prompts
    assert prompts == ["a dog", "a cat"]


def test_on_the_left_on_the_right_with_lead_context(planner: RulesPlanner) -> None:
    result = planner.plan(
        "A couple in a cafe: on the left a girl with a silver braid, "
        "on the right a man with blonde hair"
    )
    assert _grid(result) == [2]
    left, right = result.plan.prompts
    assert "silver braid" in left and "blonde" not in left
    assert "blonde hair" in right and "braid" not in right
    assert "in a cafe" in left and "in a cafe" in right
    assert result.plan.base_prompt is not None and "couple" in result.plan.base_prompt.lower()


def test_middle_goes_between_left_and_right(planner: RulesPlanner) -> None:
    result = planner.plan("on the right a fox, in the center an owl, on the left a deer")
    assert _grid(result) == [3]
    assert result.plan.prompts == ["a deer", "an owl", "a fox"]


def test_positions_after_entities(planner: RulesPlanner) -> None:
    result = planner.plan(
        "a girl in a red dress on the left and a man in a grey suit on the right, in a park"
    )
    left, right = result.plan.prompts
    assert left.startswith("a girl in a red dress") and "suit" not in left
    assert right.startswith("a man in a grey suit") and "dress" not in right
    assert left.endswith("in a park") and right.endswith("in a park")


def test_top_and_bottom_make_rows(planner: RulesPlanner) -> None:
    result = planner.plan(
        "At the top a starry night sky, in the middle a snowy mountain, at the bottom a frozen lake"
    )
    assert _grid(result) == [1, 1, 1]
    sky, mountain, lake = result.plan.prompts
    assert "sky" in sky and "mountain" in mountain and "lake" in lake


def test_top_to_bottom_sequence_makes_rows(planner: RulesPlanner) -> None:
    result = planner.plan("from top to bottom: clouds, a castle and a moat")
    assert _grid(result) == [1, 1, 1]


def test_row_heading_with_columns_inside(planner: RulesPlanner) -> None:
    result = planner.plan(
        "at the top a blue sky; at the bottom, on the left a cat and on the right a dog"
    )
    assert _grid(result) == [1, 2]
    assert result.plan.prompts == ["a blue sky", "a cat", "a dog"]


def test_corners_make_a_grid(planner: RulesPlanner) -> None:
    result = planner.plan(
        "bottom right a fish, top left a cat, bottom left a bird, top right a dog"
    )
    assert _grid(result) == [2, 2]
    assert result.plan.prompts == ["a cat", "a dog", "a bird", "a fish"]


@pytest.mark.parametrize(
    ("prompt", "left", "right"),
    [
        ("a brown bear next to a white rabbit", "brown bear", "white rabbit"),
        ("a brown bear beside a white rabbit", "brown bear", "white rabbit"),
        ("a brown bear to the left of a white rabbit", "brown bear", "white rabbit"),
        ("a brown bear to the right of a white rabbit", "white rabbit", "brown bear"),
        ("a brown bear and a white rabbit", "brown bear", "white rabbit"),
    ],
)
def test_pairwise_cues(planner: RulesPlanner, prompt: str, left: str, right: str) -> None:
    result = planner.plan(f"{prompt} in a snowy forest")
    assert _grid(result) == [2]
    first, second = result.plan.prompts
    assert left in first and right not in first
    assert right in second and left not in second
    assert first.endswith("in a snowy forest") and second.endswith("in a snowy forest")


def test_style_prefix_and_suffix_are_shared(planner: RulesPlanner) -> None:
    result = planner.plan("a photo of a corgi next to a tabby cat on a sofa, oil painting")
    for prompt in [*result.plan.prompts, result.plan.base_prompt or ""]:
        assert prompt.startswith("a photo of ")
        assert "on a sofa" in prompt
        assert prompt.endswith(", oil painting")
    assert "corgi" in result.plan.prompts[0] and "cat" in result.plan.prompts[1]


@pytest.mark.parametrize(
    "prompt",
    [
        "A watercolor of a lighthouse at dusk",
        "a girl with red hair and blue eyes",  # "and" joins attributes, not entities
        "a girl with a hat and a scarf",  # worn things belong to the girl
        "a cat on the left",  # one position alone is no layout
        "cats and dogs",  # no determiners: could be one crowd
    ],
)
def test_no_spatial_structure_gives_one_region(planner: RulesPlanner, prompt: str) -> None:
    result = planner.plan(prompt)
    assert _grid(result) == [1]
    assert result.plan.base_prompt is None
    assert result.plan.prompts == [prompt]
    assert result.recaption.original_prompt == prompt


def test_deterministic() -> None:
    prompt = "In a kitchen, on the left a chef with a knife, on the right a bowl of lemons"
    first = RulesPlanner().plan(prompt)
    second = RulesPlanner().plan(prompt)
    assert first.plan == second.plan
    assert first.recaption == second.recaption


def test_options() -> None:
    plan = RulesPlanner(use_base=False).plan("a cat and a dog").plan
    assert plan.base_prompt is None and len(plan.regions) == 2
    assert RulesPlanner(base_ratio=0.5).plan("a cat and a dog").plan.base_ratio == 0.5
    with pytest.raises(ConfigurationError, match="model"):
        RulesPlanner(model="gpt")
    with pytest.raises(ConfigurationError, match="base_ratio"):
        RulesPlanner(base_ratio=2)


def test_registered_as_rules() -> None:
    planner = rpg.create_planner("rules")
    assert isinstance(planner, RulesPlanner)
    assert planner.name == "rules"


def test_image_is_refused(planner: RulesPlanner) -> None:
    with pytest.raises(PlannerError, match="cannot read images"):
        planner.plan("a cat and a dog", image=Image.new("RGB", (8, 8)))


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_blank_prompt_is_refused(planner: RulesPlanner, prompt: str) -> None:
    with pytest.raises(PlannerError, match="empty"):
        planner.plan(prompt)


_WORDS = st.sampled_from(
    [
        "a", "the", "cat", "dog", "and", ",", ";", ":", ".", "on the left", "on the right",
        "in the middle", "at the top", "at the bottom", "top left", "from left to right",
        "next to", "beside", "to the right of", "in a cafe", "photo of", "oil painting",
        "with", "a hat", "of the image", "is", "BREAK", "on a sofa", "in the top left corner of",
        "a small", "a big", "in the centre of", "bottom right",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(min_size=1), st.lists(_WORDS, min_size=1, max_size=12).map(" ".join)))
def test_any_text_gives_a_valid_plan_or_planner_error(text: str) -> None:
    try:
        result = RulesPlanner().plan(text)
    except PlannerError:
        assert not text.strip()  # the only input it refuses is a blank one
        return
    plan = result.plan
    assert len(plan.regions) == len(plan.prompts) >= 1
    assert len(plan.boxes()) == len(plan.regions)
    assert all(p.strip() for p in plan.prompts)
    if plan.is_canvas:  # layers in boxes over a background
        assert plan.base_prompt is not None and all(layer.box for layer in plan.layers)
        return
    assert (
        rpg.RegionPlan.from_split_ratio(
            plan.to_split_ratio(), plan.prompts, base_prompt=plan.base_prompt
        ).prompts
        == plan.prompts
    )
