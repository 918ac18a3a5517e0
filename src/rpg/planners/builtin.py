"""Registers rpg's own planners through the same hook third-party plugins use.

Factories import their backend lazily, so ``import rpg`` never needs the optional ``openai``,
``ollama`` or ``transformers``-planner dependencies.

Every factory takes ``cache`` (what ``rpg plan --no-cache`` turns off): the LLM planners are
wrapped in :class:`~rpg.planners.cache.CachedPlanner` when it is true; the rules planner is
instant and ignores it.
"""

from __future__ import annotations

from typing import Any

from rpg.hookspecs import hookimpl
from rpg.planners.base import Planner
from rpg.plugins import PlannerRegistry


def _cached(planner: Planner, cache: bool) -> Planner:
    if not cache:
        return planner
    from rpg.planners.cache import CachedPlanner

    return CachedPlanner(planner)


def _rules(*, cache: bool = True, **options: Any) -> Planner:
    from rpg.planners.rules import RulesPlanner

    return RulesPlanner(**options)


def _openai(*, cache: bool = True, **options: Any) -> Planner:
    from rpg.planners.openai import OpenAIPlanner

    return _cached(OpenAIPlanner(**options), cache)


def _ollama(*, cache: bool = True, **options: Any) -> Planner:
    from rpg.planners.ollama import OllamaPlanner

    return _cached(OllamaPlanner(**options), cache)


def _hf(*, cache: bool = True, **options: Any) -> Planner:
    from rpg.planners.hf import HFPlanner

    planner = HFPlanner(**options)
    planner.resolve()  # a model that is not there fails now, before anything else loads
    return _cached(planner, cache)


def _auto(**options: Any) -> Planner:
    from rpg.planners.auto import create_auto_planner

    return create_auto_planner(**options)


@hookimpl(tryfirst=True)  # rpg's own names first, so a clash names the plugin
def rpg_register_planners(registry: PlannerRegistry) -> None:
    registry.register("rules", _rules, description="offline, rule-based; no model needed")
    registry.register(
        "openai",
        _openai,
        description="OpenAI API or any OpenAI-compatible server (--base-url); needs a key",
    )
    registry.register("ollama", _ollama, description="a model served by Ollama (--ollama-host)")
    registry.register(
        "hf", _hf, description="a local transformers/GGUF model, schema-constrained decoding"
    )
    registry.register(
        "auto", _auto, description="openai if a key is set, else ollama if running, else rules"
    )
