"""``GridPlanner``: one region per listed thing, laid out as a near-square grid.

"a cat, a dog, a fox and an owl in a snowy forest" has four things and a shared setting ("in a
snowy forest"), so the plan is two rows of two regions, each prompt naming one thing in the
setting, with the whole prompt as the base prompt that ties the picture together.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING

import rpg

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["GridPlanner"]

# "in a forest", "on a table", ...: a trailing phrase every region shares.
_SETTING = re.compile(r"\s+((?:in|on|at|under|inside|by|near)\s+(?:a|an|the)\s+.+)$", re.I)
_SEPARATORS = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+", re.I)


class GridPlanner:
    """Split a listing prompt into a grid of regions, reading order = list order.

    ``max_columns`` caps the columns per row; ``base_ratio`` is the weight of the whole prompt,
    blended into every region (0 turns the base prompt off).
    """

    #: rpg records this in every ``PlanResult`` and the PNG metadata.
    name = "example-grid"

    def __init__(self, *, max_columns: int = 3, base_ratio: float = 0.2) -> None:
        if max_columns < 1:
            raise rpg.ConfigurationError(f"max_columns must be 1 or more, got {max_columns}")
        if not 0 <= base_ratio <= 1:
            raise rpg.ConfigurationError(f"base_ratio must be between 0 and 1, got {base_ratio}")
        self.max_columns = max_columns
        self.base_ratio = base_ratio

    def plan(self, prompt: str, *, image: Image | None = None) -> rpg.PlanResult:
        """Plan ``prompt``; a prompt that lists one thing gives one full-canvas region."""
        start = time.perf_counter()
        if image is not None:
            raise rpg.PlannerError("the example-grid planner cannot read images")
        text = " ".join(prompt.split()).rstrip(".")
        if not text:
            raise rpg.PlannerError("the prompt is empty; list the things to draw")
        setting = ""
        match = _SETTING.search(text)
        if match:
            setting, text = match.group(1), text[: match.start()]
        items = [item for item in _SEPARATORS.split(text) if item.strip()]
        prompts = [f"{item} {setting}".strip() for item in items]

        columns = min(self.max_columns, math.ceil(math.sqrt(len(prompts))))
        rows = [prompts[i : i + columns] for i in range(0, len(prompts), columns)]
        plan = rpg.RegionPlan(
            rows=[rpg.Row(regions=[rpg.Region(prompt=p) for p in row]) for row in rows],
            base_prompt=prompt if len(prompts) > 1 and self.base_ratio > 0 else None,
            base_ratio=self.base_ratio,
        )
        return rpg.PlanResult(
            recaption=rpg.Recaption(
                original_prompt=prompt,
                entities=[rpg.Entity(name=item) for item in items],
            ),
            plan=plan,
            planner=self.name,
            seconds=time.perf_counter() - start,
        )
