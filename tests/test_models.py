"""The typed core: validation, JSON round trips, schema export."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

import rpg
from rpg.models import GenerationRequest, PlanResult, Recaption, Region, RegionPlan, Row


def test_from_split_ratio_examples_from_the_grammar() -> None:
    assert [len(r.regions) for r in RegionPlan.from_split_ratio("1,1", "a BREAK b").rows] == [2]
    three_rows = RegionPlan.from_split_ratio("1;1;1", ["a", "b", "c"])
    assert [len(r.regions) for r in three_rows.rows] == [1, 1, 1]
    grid = RegionPlan.from_split_ratio("1,1,1;1,1,1", "a BREAK b BREAK c BREAK d")
    assert [len(r.regions) for r in grid.rows] == [2, 2]
    assert grid.prompts == ["a", "b", "c", "d"]
    mixed = RegionPlan.from_split_ratio("0.3;0.7,1,2", "sky BREAK left BREAK right")
    boxes = mixed.boxes()
    assert boxes[0] == pytest.approx((0.0, 0.0, 1.0, 0.3))
    assert boxes[1] == pytest.approx((0.0, 0.3, 1 / 3, 1.0))
    assert boxes[2] == pytest.approx((1 / 3, 0.3, 1.0, 1.0))


def test_use_base_takes_the_first_prompt_as_base() -> None:
    plan = RegionPlan.from_split_ratio("1,1", "two girls BREAK girl A BREAK girl B", use_base=True)
    assert plan.base_prompt == "two girls"
    assert plan.prompts == ["girl A", "girl B"]
    assert plan.base_weights() == [plan.base_ratio, plan.base_ratio]


@pytest.mark.parametrize(
    ("ratio", "prompts", "fragment"),
    [
        ("1,1", "a BREAK b BREAK c", "has 2 regions but 3 prompts"),
        ("1,1,1", "a BREAK b", "has 3 regions but 2 prompts"),
        ("1,-1", "a BREAK b", "must be positive"),
        ("1,x", "a BREAK b", "'x' is not a number"),
        ("1,,1", "a BREAK b BREAK c", "empty value"),
        ("", "a", "empty"),
        ("1,1", "a BREAK  ", "prompt 2 of 2 is empty"),
    ],
)
def test_bad_split_ratio_names_the_problem(ratio: str, prompts: str, fragment: str) -> None:
    with pytest.raises(rpg.SplitRatioError, match=fragment) as info:
        RegionPlan.from_split_ratio(ratio, prompts)
    assert isinstance(info.value, ValueError)


def test_base_weights_are_zero_without_base_prompt_and_override_per_region() -> None:
    plan = RegionPlan(
        rows=[Row(regions=[Region(prompt="a", base_weight=0.8), Region(prompt="b")])],
        base_ratio=0.5,
    )
    assert plan.base_weights() == [0.0, 0.0]
    with_base = plan.model_copy(update={"base_prompt": "scene"})
    assert with_base.base_weights() == [0.8, 0.5]


def test_blank_prompts_and_bad_numbers_are_rejected() -> None:
    with pytest.raises(ValidationError, match="must not be empty"):
        Region(prompt="   ")
    with pytest.raises(ValidationError):
        Region(prompt="a", width=0)
    with pytest.raises(ValidationError):
        Row(regions=[])
    with pytest.raises(ValidationError):
        RegionPlan(rows=[Row(regions=[Region(prompt="a")])], base_ratio=1.5)
    with pytest.raises(ValidationError):
        RegionPlan.model_validate({"rows": [{"regions": [{"prompt": "a"}]}], "colour": "red"})


def test_models_are_frozen() -> None:
    plan = RegionPlan.single("a cat")
    with pytest.raises(ValidationError):
        plan.base_ratio = 0.9  # type: ignore[misc]


def test_plan_json_round_trip_and_load_accepts_plan_result(tmp_path) -> None:
    plan = RegionPlan.from_split_ratio(
        "1;2,1,3", "sky BREAK cat BREAK dog", base_prompt="a park", base_ratio=0.25
    )
    assert RegionPlan.model_validate_json(plan.model_dump_json()) == plan
    result = PlanResult(recaption=Recaption(original_prompt="p"), plan=plan, planner="x")
    (tmp_path / "result.json").write_text(result.model_dump_json())
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    assert RegionPlan.load(tmp_path / "result.json") == plan
    assert RegionPlan.load(tmp_path / "plan.json") == plan
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RegionPlan.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="plan file not found"):
        RegionPlan.load(tmp_path / "missing.json")


def test_json_schema_describes_every_field() -> None:
    schema = RegionPlan.model_json_schema()
    json.dumps(schema)  # serialisable, as planners send it to LLMs
    region = schema["$defs"]["Region"]
    assert region["additionalProperties"] is False
    for model in (Region, Row, RegionPlan, Recaption, GenerationRequest, PlanResult):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize("size", [100, 513, 7])
def test_request_sizes_must_be_multiples_of_8(size: int) -> None:
    with pytest.raises(ValidationError, match=r"multiple of 8|greater than or equal"):
        GenerationRequest(prompt="a cat", width=size, height=512)


def test_request_rejects_blank_prompt_and_applies_base_ratio_override() -> None:
    with pytest.raises(ValidationError, match="prompt must not be empty"):
        GenerationRequest(prompt=" ")
    plan = RegionPlan.from_split_ratio("1,1", "a BREAK b", base_prompt="s", base_ratio=0.3)
    request = GenerationRequest(prompt="x", plan=plan, base_ratio=0.6)
    effective = request.effective_plan()
    assert effective is not None
    assert effective.base_weights() == [0.6, 0.6]
    assert GenerationRequest.model_validate_json(request.model_dump_json()) == request
