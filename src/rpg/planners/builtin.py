"""Registers rpg's own planners through the same hook third-party plugins use.

Factories import their backend lazily, so ``import rpg`` never needs the optional ``openai``,
``ollama`` or ``transformers``-planner dependencies.
"""

from __future__ import annotations

from typing import Any

from rpg.hookspecs import hookimpl
from rpg.planners.base import Planner
from rpg.plugins import PlannerRegistry


def _rules(**options: Any) -> Planner:
    from rpg.planners.rules import RulesPlanner

    return RulesPlanner(**options)


@hookimpl
def rpg_register_planners(registry: PlannerRegistry) -> None:
    registry.register("rules", _rules, description="offline, rule-based; no model needed")
