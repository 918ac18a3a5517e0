"""The planner contract: turn a prompt (and optionally an image) into a validated plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rpg.errors import PlannerError

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.models import PlanResult

__all__ = ["Planner", "PlannerError"]


@runtime_checkable
class Planner(Protocol):
    """Anything with a ``name`` and a ``plan`` method is a planner.

    ``plan`` returns a validated :class:`~rpg.models.PlanResult` or raises
    :class:`~rpg.errors.PlannerError` carrying the raw reply; it never returns a silent default.
    Planners that cannot read images raise ``PlannerError`` when given one.
    """

    name: str

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult: ...
