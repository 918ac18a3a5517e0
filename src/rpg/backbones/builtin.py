"""Registers rpg's own backbones through the same hook third-party plugins use."""

from __future__ import annotations

from rpg.hookspecs import hookimpl
from rpg.plugins import BackboneRegistry


@hookimpl
def rpg_register_backbones(registry: BackboneRegistry) -> None:
    del registry  # filled in as backbones land
