"""The planner contract: turn a prompt (and optionally an image) into a validated plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rpg.errors import PlannerError

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.models import PlanResult

__all__ = ["DEFAULT_PLANNER", "Planner", "PlannerError"]

#: The planner used when none is named, by the library (``RPG``, ``create_planner``) and the
#: ``rpg`` command alike: the offline rules planner, so that nothing leaves the machine, costs
#: money or depends on which servers happen to answer unless a planner is asked for
#: (``"auto"`` picks an LLM when one is reachable).
DEFAULT_PLANNER = "rules"


@runtime_checkable
class Planner(Protocol):
    """Anything with a ``name`` and a ``plan`` method is a planner.

    ``plan`` returns a validated :class:`~rpg.models.PlanResult` or raises
    :class:`~rpg.errors.PlannerError` carrying the raw reply; it never returns a silent default.
    Planners that cannot read images raise ``PlannerError`` when given one.
    """

    name: str

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult: ...
