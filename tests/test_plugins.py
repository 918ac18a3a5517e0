"""Third-party plugins found through the ``rpg`` entry-point group."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rpg
from rpg import plugins
from rpg.cli import main
from rpg.errors import RegistryError
from rpg.plugins import backbone_registry

PLUGIN_SOURCE = """
import rpg
from rpg.models import PlanResult, Recaption, RegionPlan


class HalvesPlanner:
    name = "halves"

    def __init__(self, **options):
        self.options = options

    def plan(self, prompt, *, image=None):
        plan = RegionPlan.from_split_ratio("1,1", [prompt + " (left)", prompt + " (right)"])
        return PlanResult(recaption=Recaption(original_prompt=prompt), plan=plan, planner="halves")


@rpg.hookimpl
def rpg_register_planners(registry):
    registry.register("{name}", HalvesPlanner, description="splits every prompt in two")
"""


def _install_fake_distribution(root: Path, dist: str, module: str, planner_name: str) -> None:
    """Write a module and its dist-info, as pip would, so importlib.metadata finds it."""
    (root / f"{module}.py").write_text(PLUGIN_SOURCE.replace("{name}", planner_name))
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[rpg]\n{module} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    plugins.reset()
    yield
    plugins.reset()


def test_third_party_planner_is_registered_with_its_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None, capsys
) -> None:
    _install_fake_distribution(tmp_path, "rpg-halves", "rpg_halves_plugin", "halves")
    monkeypatch.syspath_prepend(str(tmp_path))

    entry = plugins.planner_registry().get("halves")
    assert entry.source == "rpg-halves 1.2.3"
    assert "rules" in plugins.planner_registry()  # built-ins still there

    result = rpg.create_planner("halves").plan("a cat")
    assert result.plan.prompts == ["a cat (left)", "a cat (right)"]

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("halves"))
    assert "rpg-halves 1.2.3" in line
    assert "splits every prompt in two" in line


def test_duplicate_name_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    _install_fake_distribution(tmp_path, "rpg-clash", "rpg_clash_plugin", "rules")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=r"'rules' is registered twice.*rpg-clash 1\.2\.3"):
        plugins.planner_registry()


def test_unknown_planner_lists_the_registered_ones(fresh_registry: None) -> None:
    with pytest.raises(RegistryError, match=r"unknown planner 'nope'; registered: .*rules"):
        rpg.create_planner("nope")


def test_invalid_names_are_rejected() -> None:
    registry = plugins.PlannerRegistry()
    with pytest.raises(RegistryError, match="invalid planner name"):
        registry.register("has space", object)
    registry.register("Mine", object)
    assert registry.names() == ["mine"]
    assert "MINE" in registry


# ------------------------------------------------------------------------- through pluggy's caller


class WrappingPlugin:
    """A hook wrapper around planner registration, as any pluggy project allows."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[str], list[str]]] = []

    @rpg.hookimpl(wrapper=True)
    def rpg_register_planners(self, registry: plugins.PlannerRegistry) -> Any:
        before = registry.names()
        result = yield
        self.seen.append((before, registry.names()))
        return result


class ExtraPlanners:
    @rpg.hookimpl
    def rpg_register_planners(self, registry: plugins.PlannerRegistry) -> None:
        _register_through_a_helper(registry)


def _register_through_a_helper(registry: plugins.PlannerRegistry) -> None:
    registry.register("extra", lambda **options: None, description="made by a helper")


def test_hook_wrappers_run_around_registration(fresh_registry: None) -> None:
    wrapper = WrappingPlugin()
    pm = plugins.get_plugin_manager()
    pm.register(wrapper, name="wrapping-plugin")
    pm.register(ExtraPlanners(), name="extra-plugin")

    registry = plugins.planner_registry()
    (before, after) = wrapper.seen[0]
    assert len(wrapper.seen) == 1
    assert before == []  # the wrapper ran before every implementation...
    assert {"rules", "openai", "extra"} <= set(after)  # ...and after all of them
    entry = registry.get("extra")
    assert entry.plugin == "extra-plugin" and entry.source == "extra-plugin"
    rules = registry.get("rules")
    assert rules.builtin and rules.plugin == "rpg.planners.builtin"
    assert rules.source.startswith("rpg-diffusion")


def test_registration_is_traced(fresh_registry: None) -> None:
    pm = plugins.get_plugin_manager()
    lines: list[str] = []
    pm.trace.root.setwriter(lines.append)
    undo = pm.enable_tracing()
    try:
        plugins.backbone_registry()
    finally:
        undo()
    assert any("rpg_register_backbones" in line for line in lines)


def test_direct_registration_names_the_calling_module() -> None:
    registry = plugins.PlannerRegistry()
    registry.register("mine", object)
    assert registry.get("mine").source == __name__
    assert registry.get("mine").plugin == ""


# --------------------------------------------------------------------------- detection priority


def _sd_info() -> Any:
    from rpg.backbones.loading import ModelInfo

    return ModelInfo("some-sd", "folder", None, {"_class_name": "StableDiffusionPipeline"})


def _shadowing_plugin(priority: int | None) -> object:
    from rpg.backbones.sd import StableDiffusionBackbone

    class AnotherSD(StableDiffusionBackbone):
        """Detects exactly the models the built-in SD backbone detects."""

        name = "a-plugin-sd"  # sorts before "sd"

    class Plugin:
        backbone = AnotherSD

        @rpg.hookimpl
        def rpg_register_backbones(self, registry: plugins.BackboneRegistry) -> None:
            options = {} if priority is None else {"priority": priority}
            registry.register(AnotherSD.name, AnotherSD, description="shadow", **options)

    return Plugin()


def test_a_plugin_cannot_shadow_a_builtin_backbone_by_its_name(fresh_registry: None) -> None:
    from rpg.backbones.sd import StableDiffusionBackbone
    from rpg.orchestrator import select_backbone

    plugins.get_plugin_manager().register(_shadowing_plugin(None), name="shadow")
    assert _shadowing_plugin(None).backbone.detect(_sd_info())  # it does detect SD models
    assert select_backbone(_sd_info()) is StableDiffusionBackbone
    order = [e.name for e in plugins.backbone_registry().detection_order()]
    assert order.index("sd") < order.index("a-plugin-sd")


def test_a_higher_priority_takes_over_detection_on_purpose(fresh_registry: None) -> None:
    from rpg.orchestrator import select_backbone

    plugin = _shadowing_plugin(10)
    plugins.get_plugin_manager().register(plugin, name="shadow")
    chosen = select_backbone(_sd_info())
    assert chosen.name == "a-plugin-sd"
    assert plugins.backbone_registry().get("a-plugin-sd").priority == 10


def test_builtin_backbones_are_listed_without_importing_torch() -> None:
    """``rpg plugins`` prints its list in a fresh interpreter that never imports torch."""
    probe = (
        "import sys\n"
        "from rpg.cli import main\n"
        "code = main(['plugins'])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') "
        "if m in sys.modules), code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert "sdxl-controlnet" in proc.stdout and "rules" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY [] 0"


def test_lazy_backbone_entries_match_their_classes() -> None:
    """The names and descriptions written in the built-in table are the classes' own."""
    from rpg.backbones.builtin import BUILTIN_BACKBONES

    registry = backbone_registry()
    for name, _path, description in BUILTIN_BACKBONES:
        entry = registry.get(name)
        assert entry.description == description
        cls = entry.target
        assert isinstance(cls, type)
        assert cls.name == name
        assert cls.description == description
