"""The plugin manager and the registries of planners and backbones.

Plugins are found through the entry-point group ``rpg``; rpg's built-in planners and backbones
are registered by the same hooks, so a third-party plugin is a first-class citizen.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy

from rpg import hookspecs
from rpg.errors import RegistryError

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "BackboneRegistry",
    "PlannerRegistry",
    "Registry",
    "RegistryEntry",
    "backbone_registry",
    "get_plugin_manager",
    "planner_registry",
    "reset",
]

ENTRY_POINT_GROUP = "rpg"
PROJECT_NAME = "rpg"

#: Modules of rpg itself that implement hooks, loaded before third-party plugins.
BUILTIN_PLUGINS: tuple[str, ...] = ("rpg.planners.builtin", "rpg.backbones.builtin")

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """A registered name, what it makes, and the distribution that registered it."""

    name: str
    target: T
    source: str
    description: str = ""


class Registry(Generic[T]):
    """Names mapped to factories; a duplicate name is an error that names both sources."""

    kind = "item"

    def __init__(self) -> None:
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._source = "unknown"

    def register(self, name: str, target: T, *, description: str = "") -> None:
        """Register ``target`` under ``name`` (lower-case letters, digits, ``-``, ``_``, ``.``)."""
        key = name.strip().lower()
        if not key or not all(c.isalnum() or c in "-_." for c in key):
            raise RegistryError(f"invalid {self.kind} name {name!r}: use letters, digits, - _ .")
        if key in self._entries:
            other = self._entries[key].source
            raise RegistryError(
                f"{self.kind} {key!r} is registered twice: by {other} and by {self._source}; "
                f"uninstall one of them or register under another name"
            )
        self._entries[key] = RegistryEntry(key, target, self._source, description)

    def get(self, name: str) -> RegistryEntry[T]:
        key = name.strip().lower()
        try:
            return self._entries[key]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[RegistryEntry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


class PlannerRegistry(Registry[Callable[..., Any]]):
    """Planner factories: ``factory(**options) -> Planner``."""

    kind = "planner"


class BackboneRegistry(Registry[Any]):
    """Backbone classes (see :class:`rpg.backbones.base.Backbone`)."""

    kind = "backbone"


_manager: pluggy.PluginManager | None = None
_planners: PlannerRegistry | None = None
_backbones: BackboneRegistry | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and entry-point plugins loaded."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        for modname in BUILTIN_PLUGINS:
            module = importlib.import_module(modname)
            pm.register(module, name=modname)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        _manager = pm
    return _manager


def _source_of(pm: pluggy.PluginManager, plugin: object) -> str:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return f"{dist.project_name} {dist.version}"
    if isinstance(plugin, ModuleType) and plugin.__name__.startswith("rpg."):
        try:
            return f"rpg-diffusion {importlib.metadata.version('rpg-diffusion')}"
        except importlib.metadata.PackageNotFoundError:
            return "rpg-diffusion"
    return getattr(plugin, "__name__", repr(plugin))


def _fill(registry: Registry[Any], hook_name: str) -> None:
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    # Call each implementation on its own so every entry records the distribution it came from.
    for impl in reversed(hook.get_hookimpls()):
        registry._source = _source_of(pm, impl.plugin)
        impl.function(registry=registry)
    registry._source = "unknown"


def planner_registry() -> PlannerRegistry:
    """All registered planners (built-in and from plugins)."""
    global _planners
    if _planners is None:
        reg = PlannerRegistry()
        _fill(reg, "rpg_register_planners")
        _planners = reg
    return _planners


def backbone_registry() -> BackboneRegistry:
    """All registered backbones (built-in and from plugins)."""
    global _backbones
    if _backbones is None:
        reg = BackboneRegistry()
        _fill(reg, "rpg_register_backbones")
        _backbones = reg
    return _backbones


def reset() -> None:
    """Forget the plugin manager and registries (after installing a plugin at run time)."""
    global _manager, _planners, _backbones
    _manager = _planners = _backbones = None
