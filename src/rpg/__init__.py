"""rpg — Recaption, Plan, Generate: LLM-planned regional prompting for stock diffusers pipelines.

The typed core (plans, requests, results) is importable without loading any model::

    import rpg
    plan = rpg.RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from rpg.errors import (
    ConfigurationError,
    ModelNotFoundError,
    PlannerError,
    RegistryError,
    RPGError,
    SplitRatioError,
)
from rpg.hookspecs import hookimpl
from rpg.models import (
    ControlInput,
    Entity,
    GenerationRequest,
    GenerationResult,
    PlanResult,
    Recaption,
    Region,
    RegionPlan,
    Row,
)

try:
    __version__ = version("rpg-diffusion")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "RPG",
    "ConfigurationError",
    "ControlInput",
    "Entity",
    "GenerationRequest",
    "GenerationResult",
    "ModelNotFoundError",
    "PlanResult",
    "PlannerError",
    "RPGError",
    "Recaption",
    "Region",
    "RegionPlan",
    "RegistryError",
    "Row",
    "SplitRatioError",
    "__version__",
    "create_planner",
    "hookimpl",
]

if TYPE_CHECKING:
    from rpg.orchestrator import RPG
    from rpg.planners.base import Planner


def create_planner(name: str | None = None, **options: Any) -> Planner:
    """Make a registered planner by name, passing ``options`` to its factory.

    Without a name: :data:`rpg.planners.base.DEFAULT_PLANNER`, the one ``RPG`` and the ``rpg``
    command use too.
    """
    from rpg.planners.base import DEFAULT_PLANNER
    from rpg.plugins import planner_registry

    return planner_registry().get(name or DEFAULT_PLANNER).target(**options)


def __getattr__(name: str) -> Any:
    # The orchestrator pulls in torch and diffusers; load it only when asked for.
    if name == "RPG":
        from rpg.orchestrator import RPG

        return RPG
    raise AttributeError(f"module 'rpg' has no attribute {name!r}")
