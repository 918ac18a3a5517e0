"""Third-party plugins found through the ``rpg`` entry-point group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import rpg
from rpg import plugins
from rpg.cli import main
from rpg.errors import RegistryError

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
