"""Hook specifications of rpg's plugin system (pluggy project ``rpg``).

A plugin is a plain module listed under the ``rpg`` entry-point group that implements some of
these hooks with :data:`rpg.hookimpl`. rpg's own planners and backbones register the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from rpg.plugins import BackboneRegistry, PlannerRegistry, ScorerRegistry

hookspec = pluggy.HookspecMarker("rpg")
hookimpl = pluggy.HookimplMarker("rpg")


@hookspec
def rpg_register_planners(registry: PlannerRegistry) -> None:
    """Register planner factories with ``registry.register(name, factory, description=...)``.

    A factory is called with the user's keyword options (``model=``, ``base_url=``, ...) and
    returns an object that follows :class:`rpg.planners.base.Planner`.
    """


@hookspec
def rpg_register_backbones(registry: BackboneRegistry) -> None:
    """Register backbone classes with ``registry.register(name, backbone_cls, description=...)``.

    A backbone class follows :class:`rpg.backbones.base.Backbone`.
    """


@hookspec
def rpg_register_scorers(registry: ScorerRegistry) -> None:
    """Register image scorers for ``rpg eval`` with ``registry.register(name, factory, ...)``.

    A factory is called with the user's options (``--scorer-option model=...``) and returns an
    object that follows :class:`rpg.eval.scorers.Scorer`.
    """
