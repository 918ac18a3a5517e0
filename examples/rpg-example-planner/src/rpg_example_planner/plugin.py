"""The module the ``rpg`` entry point names: it registers the planner with rpg's registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import rpg

if TYPE_CHECKING:
    from rpg.plugins import PlannerRegistry
    from rpg_example_planner.planner import GridPlanner


def _factory(*, cache: bool = True, model: str | None = None, **options: Any) -> GridPlanner:
    """Build the planner from the options rpg passes.

    ``rpg plan`` passes ``cache=False`` for ``--no-cache`` and ``model``/``base_url``/``host``
    when they are given; this planner needs no model and is instant, so it takes and ignores
    ``cache``, and reads ``--model`` as the largest number of columns (``--model 2``).
    """
    del cache
    from rpg_example_planner.planner import GridPlanner

    if model is not None:
        try:
            options["max_columns"] = int(model)
        except ValueError:
            raise rpg.ConfigurationError(
                f"the example-grid planner reads --model as a column count, got {model!r}"
            ) from None
    return GridPlanner(**options)


@rpg.hookimpl
def rpg_register_planners(registry: PlannerRegistry) -> None:
    registry.register(
        "example-grid",
        _factory,
        description="lists ('a, b, c and d in a forest') become a grid, one item per region",
    )
