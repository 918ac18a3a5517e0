"""``--planner auto``: openai with a key, else a running Ollama, else rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import rpg
from planner_helpers import closed_port
from rpg.cli import main
from rpg.models import PlanResult
from rpg.planners.auto import select_planner
from rpg.planners.cache import CachedPlanner
from rpg.planners.ollama import OllamaPlanner
from rpg.planners.openai import OpenAIPlanner
from rpg.plugins import planner_registry
from servers import OllamaServer, Reply


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    # nothing listens here, so a developer's own Ollama never leaks into these tests
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{closed_port()}")
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path))


@pytest.fixture
def ollama() -> Iterator[OllamaServer]:
    with OllamaServer() as s:
        yield s


def test_registered() -> None:
    assert {"openai", "ollama", "hf", "auto", "rules"} <= set(planner_registry().names())


def test_key_selects_openai(monkeypatch: pytest.MonkeyPatch, ollama: OllamaServer) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-auto-test")
    monkeypatch.setenv("OLLAMA_HOST", ollama.host)  # openai still wins
    selection = select_planner(model="gpt-4.1-mini")
    assert selection.name == "openai"
    assert "key" in selection.reason
    assert selection.options == {"model": "gpt-4.1-mini"}
    assert "sk-auto-test" not in repr(selection)
    planner = rpg.create_planner("auto", model="gpt-4.1-mini")
    assert isinstance(planner, CachedPlanner)
    assert isinstance(planner.planner, OpenAIPlanner)
    assert planner.model == "gpt-4.1-mini"
    assert ollama.requests == []  # no probe needed


def test_base_url_selects_openai_without_a_key() -> None:
    planner = rpg.create_planner("auto", base_url="http://127.0.0.1:9/v1", cache=False)
    assert isinstance(planner, OpenAIPlanner)
    assert planner.base_url == "http://127.0.0.1:9/v1"


def test_running_ollama_is_selected(monkeypatch: pytest.MonkeyPatch, ollama: OllamaServer) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.host)
    selection = select_planner()
    assert selection.name == "ollama"
    assert selection.options["host"] == ollama.url
    planner = rpg.create_planner("auto", cache=False, model="llama3.2")
    assert isinstance(planner, OllamaPlanner)
    assert planner.host == ollama.url and planner.model == "llama3.2"
    assert [r.path for r in ollama.requests] == ["/api/version", "/api/version"]


def test_host_option_is_probed(ollama: OllamaServer) -> None:
    assert select_planner(host=ollama.host).name == "ollama"


def test_nothing_available_selects_rules() -> None:
    selection = select_planner(model="ignored")
    assert selection.name == "rules"
    assert "no OpenAI key" in selection.reason
    assert selection.options == {}  # the rules planner takes no model
    planner = rpg.create_planner("auto", model="ignored")
    assert planner.name == "rules"


def test_slow_ollama_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = {"GET /api/version": Reply(200, {"version": "x"}, delay=3)}
    with OllamaServer(routes=routes) as slow:
        monkeypatch.setenv("OLLAMA_HOST", slow.host)
        assert select_planner(probe_timeout=0.1).name == "rules"


def test_cli_auto_reports_the_planner_that_ran(
    monkeypatch: pytest.MonkeyPatch, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = {
        "recaption": "r",
        "entities": [],
        "rows": [{"height": 1, "regions": [{"prompt": "a cat", "width": 1}]}],
        "base_prompt": None,
        "base_ratio": 0.3,
    }
    ollama.push(ollama.chat(json.dumps(plan)))
    monkeypatch.setenv("OLLAMA_HOST", ollama.host)
    assert main(["plan", "a cat", "--planner", "auto", "--planner-model", "tiny", "--json"]) == 0
    result = PlanResult.model_validate_json(capsys.readouterr().out)
    assert result.planner == "ollama/tiny"
    assert result.plan.prompts == ["a cat"]
