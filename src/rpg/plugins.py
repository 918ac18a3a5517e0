"""The plugin manager and the registries of planners and backbones.

Plugins are found through the entry-point group ``rpg``; rpg's built-in planners and backbones
are registered by the same hooks, so a third-party plugin is a first-class citizen.

Registries are filled by calling the hook through pluggy's hook caller
(``pm.hook.rpg_register_planners(registry=...)``), so hook wrappers, ``tryfirst``/``trylast``
and tracing (``pm.enable_tracing()``) work as they do for any pluggy project. Each entry records
the plugin that registered it and where that plugin came from (its distribution, from
``pm.list_plugin_distinfo()``): the registry recognises the calling hook implementation on the
call stack.

Backbones are detected in an explicit order (:meth:`BackboneRegistry.detection_order`): higher
``priority`` first, then rpg's built-ins, then by name. A plugin therefore cannot take a model
away from a built-in backbone by the accident of its name sorting first; it must register with a
higher ``priority`` to do so on purpose.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType, FrameType, ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import pluggy

from rpg import hookspecs
from rpg.errors import RegistryError

if TYPE_CHECKING:
    from rpg.backbones.base import Backbone
    from rpg.eval.scorers import Scorer
    from rpg.planners.base import Planner

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "BackboneRegistry",
    "LazyTarget",
    "PlannerFactory",
    "PlannerRegistry",
    "Registry",
    "RegistryEntry",
    "ScorerFactory",
    "ScorerRegistry",
    "backbone_registry",
    "get_plugin_manager",
    "planner_registry",
    "reset",
    "scorer_registry",
]

ENTRY_POINT_GROUP = "rpg"
PROJECT_NAME = "rpg"

#: Modules of rpg itself that implement hooks, loaded before third-party plugins.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "rpg.planners.builtin",
    "rpg.backbones.builtin",
    "rpg.eval.builtin",
)

T = TypeVar("T")


class PlannerFactory(Protocol):
    """What a planner is registered as: called with the user's options, returns a planner."""

    def __call__(self, **options: Any) -> Planner: ...


class ScorerFactory(Protocol):
    """What a scorer is registered as: called with the user's options, returns a scorer."""

    def __call__(self, **options: Any) -> Scorer: ...


@dataclass(frozen=True)
class LazyTarget:
    """A registered target named by ``"module:attribute"``, imported on first use.

    Listing the registries (``rpg plugins``, an unknown-name error) then costs no import of
    torch or diffusers: only rendering needs the backbone classes themselves.
    """

    path: str

    def load(self) -> Any:
        module_name, _, attribute = self.path.partition(":")
        value: Any = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            value = getattr(value, part)
        return value


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """A registered name, what it makes, and who registered it.

    ``source`` is the distribution (``"rpg-halves 1.2.3"``) or module that registered it,
    ``plugin`` the name of the plugin in the plugin manager (empty when registered directly),
    ``priority`` the backbone detection priority (higher is asked first). A target registered
    as a :class:`LazyTarget` is imported the first time :attr:`target` is read.
    """

    name: str
    registered: T | LazyTarget
    source: str
    description: str = ""
    plugin: str = ""
    priority: int = 0

    @property
    def target(self) -> T:
        """What the name makes (imported now if it was registered lazily)."""
        value = self.registered
        if isinstance(value, LazyTarget):
            value = value.load()
            object.__setattr__(self, "registered", value)
        return value

    @property
    def builtin(self) -> bool:
        """Whether rpg itself registered this entry."""
        return self.plugin in BUILTIN_PLUGINS


class Registry(Generic[T]):
    """Names mapped to factories; a duplicate name is an error that names both sources."""

    kind = "item"

    def __init__(self) -> None:
        self._entries: dict[str, RegistryEntry[T]] = {}
        # code of each hook implementation being called → (plugin name, source)
        self._callers: dict[CodeType, tuple[str, str]] = {}

    def register(self, name: str, target: T, *, description: str = "") -> None:
        """Register ``target`` under ``name`` (lower-case letters, digits, ``-``, ``_``, ``.``)."""
        self._add(name, target, description=description, priority=0)

    def _add(self, name: str, target: T | LazyTarget, *, description: str, priority: int) -> None:
        key = name.strip().lower()
        if not key or not all(c.isalnum() or c in "-_." for c in key):
            raise RegistryError(f"invalid {self.kind} name {name!r}: use letters, digits, - _ .")
        plugin, source = self._caller()
        if key in self._entries:
            other = self._entries[key].source
            raise RegistryError(
                f"{self.kind} {key!r} is registered twice: by {other} and by {source}; "
                f"uninstall one of them or register under another name"
            )
        self._entries[key] = RegistryEntry(key, target, source, description, plugin, priority)

    def _caller(self) -> tuple[str, str]:
        """``(plugin name, source)`` of the hook implementation that is registering.

        It is the innermost frame on the stack that runs one of the hook's implementations; a
        registration outside a hook call is credited to the first module outside this one.
        """
        outside = ""
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            found = self._callers.get(frame.f_code)
            if found is not None:
                return found
            module = str(frame.f_globals.get("__name__", ""))
            if not outside and module != __name__:
                outside = module
            frame = frame.f_back
        return "", outside or "unknown"

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


class PlannerRegistry(Registry[PlannerFactory]):
    """Planner factories: ``factory(**options) -> Planner``."""

    kind = "planner"


class BackboneRegistry(Registry["type[Backbone]"]):
    """Backbone classes (see :class:`rpg.backbones.base.Backbone`), with detection priorities."""

    kind = "backbone"

    def register(
        self,
        name: str,
        target: type[Backbone] | LazyTarget,
        *,
        description: str = "",
        priority: int = 0,
    ) -> None:
        """Register ``target`` under ``name``; ``priority`` orders model detection.

        Detection asks higher priorities first; at equal priority rpg's own backbones come
        before plugins. Leave it at 0 unless the backbone must win over another that detects
        the same models. ``target`` may be a :class:`LazyTarget` (``"module:Class"``), so the
        class and what it imports load only when a model is detected or loaded.
        """
        self._add(name, target, description=description, priority=priority)

    def detection_order(self) -> list[RegistryEntry[type[Backbone]]]:
        """The entries in the order detection asks them: priority, built-ins, then name."""
        return sorted(self._entries.values(), key=lambda e: (-e.priority, not e.builtin, e.name))


class ScorerRegistry(Registry[ScorerFactory]):
    """Scorer factories for ``rpg eval``: ``factory(**options) -> Scorer``."""

    kind = "scorer"


_manager: pluggy.PluginManager | None = None
_planners: PlannerRegistry | None = None
_backbones: BackboneRegistry | None = None
_scorers: ScorerRegistry | None = None


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


def _source_of(pm: pluggy.PluginManager, plugin: object, plugin_name: str) -> str:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return f"{dist.project_name} {dist.version}"
    if isinstance(plugin, ModuleType) and plugin.__name__.startswith("rpg."):
        try:
            return f"rpg-diffusion {importlib.metadata.version('rpg-diffusion')}"
        except importlib.metadata.PackageNotFoundError:
            return "rpg-diffusion"
    return plugin_name


def _code_of(function: Callable[..., Any]) -> CodeType | None:
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _fill(registry: Registry[Any], hook_name: str) -> None:
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    callers = {}
    for impl in hook.get_hookimpls():
        code = _code_of(impl.function)
        if code is not None:
            callers[code] = (impl.plugin_name, _source_of(pm, impl.plugin, impl.plugin_name))
    registry._callers = callers
    try:
        hook(registry=registry)  # through pluggy: wrappers, ordering and tracing apply
    finally:
        registry._callers = {}


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


def scorer_registry() -> ScorerRegistry:
    """All registered scorers for ``rpg eval`` (built-in and from plugins)."""
    global _scorers
    if _scorers is None:
        reg = ScorerRegistry()
        _fill(reg, "rpg_register_scorers")
        _scorers = reg
    return _scorers


def reset() -> None:
    """Forget the plugin manager and registries (after installing a plugin at run time)."""
    global _manager, _planners, _backbones, _scorers
    _manager = _planners = _backbones = _scorers = None
