"""One way to show a pydantic error: where, what, on one line (CLI, batch, editor, planners)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from rpg.pydantic_errors import one_line, problems


class _Inner(BaseModel):
    ratio: float = Field(gt=0)


class _Thing(BaseModel):
    name: str
    steps: int = Field(le=100)
    inner: list[_Inner] = []

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Name must not be blank")
        return value


def _error(data: dict[str, object]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Thing.model_validate(data)
    return info.value


def test_locations_are_dotted_and_the_value_error_prefix_is_gone() -> None:
    exc = _error({"name": " ", "steps": 101, "inner": [{"ratio": 1}, {"ratio": -1}]})
    found = problems(exc)
    assert [p.loc for p in found] == [("name",), ("steps",), ("inner", "1", "ratio")]
    assert found[0].message == "Name must not be blank"  # pydantic says "Value error, Name ..."
    assert found[2].field == "inner" and found[2].type == "greater_than"
    assert one_line(exc, fallback="request") == (
        "name: Name must not be blank; steps: Input should be less than or equal to 100; "
        "inner.1.ratio: Input should be greater than 0"
    )


def test_lower_limit_prefix_and_fallback() -> None:
    exc = _error({"name": " ", "steps": 101})
    assert one_line(exc, fallback="x", lower=True, limit=1) == (
        "name: name must not be blank (and 1 more)"
    )
    assert problems(exc)[1].where("body", prefix=("plan",)) == "plan.steps"
    with pytest.raises(ValidationError) as info:
        _Thing.model_validate("not an object")
    assert one_line(info.value, fallback="the body").startswith("the body: Input should be")
