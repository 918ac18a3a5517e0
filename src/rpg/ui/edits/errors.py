"""The error every plan edit raises, and the one place an edited plan is validated.

Kept apart from the edits themselves so that the grid edits, the canvas edits and the
conversions between them share it without importing each other.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.models import RegionPlan

__all__ = ["PlanEditError", "validated"]


class PlanEditError(RPGError, ValueError):
    """An edit that would not give a valid plan; the message says why and what to do."""


def validated(data: dict[str, Any]) -> RegionPlan:
    """``data`` as a plan, or the plan model's own words for what is wrong as a PlanEditError."""
    try:
        return RegionPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanEditError(format_error(exc)) from None
