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
    Layer,
    LayerMask,
    PlanResult,
    Recaption,
    Region,
    RegionPlan,
    Row,
)
from rpg.planners.base import Planner

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
    "Layer",
    "LayerMask",
    "ModelNotFoundError",
    "PlanResult",
    "Planner",
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
    "load_request",
    "save_png",
]

if TYPE_CHECKING:
    from rpg.metadata import load_request, save_png
    from rpg.orchestrator import RPG


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
    if name in ("save_png", "load_request"):
        # PNG metadata needs Pillow; load it only when asked for.
        from rpg import metadata

        return getattr(metadata, name)
    raise AttributeError(f"module 'rpg' has no attribute {name!r}")
