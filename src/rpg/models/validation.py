"""What every model module shares: the frozen config and two small checks (a text is not blank, a
model's JSON is not too large)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Every model is frozen (hashable, safe to share) and refuses unknown keys (a typo is an error).
FROZEN = ConfigDict(frozen=True, extra="forbid")


def check_json_size(model: BaseModel, limit: int, what: str) -> None:
    """A model whose JSON would exceed ``limit`` bytes is refused, naming the limit."""
    size = len(model.model_dump_json().encode("utf-8"))
    if size > limit:
        raise ValueError(
            f"{what} is {size / 1024:.0f} KiB as JSON; the most rpg accepts is {limit // 1024} KiB "
            "(so that the PNG it is saved in can be read back)"
        )


def non_blank(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value
