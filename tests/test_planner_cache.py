"""The on-disk plan cache and the CachedPlanner wrapper."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import rpg
from rpg.cli import main
from rpg.errors import PlannerError
from rpg.models import PlanResult, Recaption, RegionPlan
from rpg.paths import cache_dir
from rpg.planners import template
from rpg.planners.cache import (
    CachedPlanner,
    PlanCache,
    cache_key,
    plan_cache_key,
    planner_identity,
)
from rpg.planners.openai import OpenAIPlanner
from rpg.planners.transport import RetryPolicy
from servers import OpenAIServer

SECRET = "sk-cache-test-secret-987654321"


class CountingPlanner:
    """A planner that makes a fresh one-region plan per call and counts the calls."""

    name = "counting"

    def __init__(self, model: str = "m1") -> None:
        self.model = model
        self.planner_id = f"counting/{model}"
        self.calls: list[tuple[str, bool]] = []

    def plan(self, prompt: str, *, image: Image.Image | None = None) -> PlanResult:
        self.calls.append((prompt, image is not None))
        plan = RegionPlan.single(f"{prompt} #{len(self.calls)}")
        return PlanResult(
            recaption=Recaption(original_prompt=prompt),
            plan=plan,
            planner=self.planner_id,
            seconds=1.5,
        )


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path))
    return tmp_path / "plans"


def test_second_call_is_served_from_disk(cache_root: Path) -> None:
    inner = CountingPlanner()
    planner = CachedPlanner(inner)
    first = planner.plan("a cat")
    assert planner.last_hit is False
    second = CachedPlanner(CountingPlanner()).plan("a cat")  # a new process would do this

    assert inner.calls == [("a cat", False)]
    assert second.plan == first.plan
    assert second.planner == "counting/m1 (cached)"
    assert second.seconds < first.seconds
    files = list(cache_root.glob("*.json"))
    assert len(files) == 1
    assert PlanResult.model_validate_json(files[0].read_text()) == first


@pytest.mark.parametrize("change", ["prompt", "model", "template", "image"])
def test_key_covers_planner_model_prompt_template_and_image(
    cache_root: Path, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    CachedPlanner(CountingPlanner()).plan("a cat", image=red)
    inner = CountingPlanner(model="m2" if change == "model" else "m1")
    prompt = "a dog" if change == "prompt" else "a cat"
    image = Image.new("RGB", (4, 4), (0, 0, 255)) if change == "image" else red.copy()
    if change == "template":
        monkeypatch.setattr(template, "TEMPLATE_VERSION", template.TEMPLATE_VERSION + "-next")
    CachedPlanner(inner).plan(prompt, image=image)
    assert len(inner.calls) == 1
    assert len(list(cache_root.glob("*.json"))) == 2


def test_same_image_content_hits(cache_root: Path) -> None:
    CachedPlanner(CountingPlanner()).plan("a cat", image=Image.new("RGB", (4, 4), (1, 2, 3)))
    inner = CountingPlanner()
    CachedPlanner(inner).plan("a cat", image=Image.new("RGB", (4, 4), (1, 2, 3)))
    assert inner.calls == []


def test_cache_key_is_stable_and_distinct() -> None:
    a = cache_key("openai/x", "x", "p", template="1")
    assert a == cache_key("openai/x", "x", "p", template="1")
    assert (
        len(
            {
                a,
                cache_key("ollama/x", "x", "p", template="1"),
                cache_key("openai/x", "x", "p", template="2"),
            }
        )
        == 3
    )


def test_corrupt_entry_is_a_miss_and_is_replaced(cache_root: Path) -> None:
    planner = CachedPlanner(CountingPlanner())
    planner.plan("a cat")
    (entry,) = cache_root.glob("*.json")
    entry.write_text("{ not json")
    again = CachedPlanner(inner := CountingPlanner())
    result = again.plan("a cat")
    assert len(inner.calls) == 1
    assert PlanResult.model_validate_json(entry.read_text()) == result


def test_failures_are_not_cached(cache_root: Path) -> None:
    class Failing(CountingPlanner):
        def plan(self, prompt: str, *, image: Image.Image | None = None) -> PlanResult:
            raise PlannerError("no", raw="junk")

    with pytest.raises(PlannerError):
        CachedPlanner(Failing()).plan("a cat")
    assert not cache_root.exists() or not list(cache_root.glob("*.json"))


def test_unwritable_cache_does_not_break_planning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    planner = CachedPlanner(CountingPlanner(), cache=PlanCache(blocker / "plans"))
    assert planner.plan("a cat").plan.prompts == ["a cat #1"]


def test_default_location_follows_platform_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("RPG_CACHE_DIR", raising=False)
    assert PlanCache().directory == Path(platformdirs.user_cache_dir("rpg")) / "plans"
    assert cache_dir("plans") == PlanCache().directory


def test_clear(cache_root: Path) -> None:
    planner = CachedPlanner(CountingPlanner())
    planner.plan("a")
    planner.plan("b")
    assert planner.cache.clear() == 2
    assert list(cache_root.glob("*.json")) == []


# --------------------------------------------------------------------------- with a real backend


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as s:
        yield s


def _plan_json() -> str:
    return json.dumps(
        {
            "recaption": "r",
            "entities": [],
            "rows": [{"height": 1, "regions": [{"prompt": "a cat", "width": 1}]}],
            "base_prompt": None,
            "base_ratio": 0.3,
        }
    )


def test_factories_cache_by_default_and_no_cache_turns_it_off(
    cache_root: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    options: dict[str, Any] = {"base_url": server.base_url, "api_key": SECRET}
    cached = rpg.create_planner("openai", **options)
    assert isinstance(cached, CachedPlanner)
    assert isinstance(rpg.create_planner("openai", cache=False, **options), OpenAIPlanner)

    server.push(server.chat(_plan_json()))
    cached.plan("a cat")
    cached.plan("a cat")
    assert len(server.chat_requests) == 1
    # the key is never written to disk
    for path in cache_root.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text()


def test_cli_no_cache(
    cache_root: Path, server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.push(*[server.chat(_plan_json()) for _ in range(3)])
    args = ["plan", "a cat", "--planner", "openai", "--base-url", server.base_url, "--json"]
    assert main(args) == 0
    assert main(args) == 0
    assert len(server.chat_requests) == 1
    out = capsys.readouterr().out
    assert "(cached)" in out
    assert main([*args, "--no-cache"]) == 0
    assert len(server.chat_requests) == 2


def test_cached_plan_keeps_the_original_prompt(cache_root: Path) -> None:
    # a (theoretical) hash collision or a hand-edited entry for another prompt is not used
    planner = CachedPlanner(CountingPlanner())
    planner.plan("a cat")
    (entry,) = cache_root.glob("*.json")
    data = json.loads(entry.read_text())
    data["recaption"]["original_prompt"] = "something else"
    entry.write_text(json.dumps(data))
    inner = CountingPlanner()
    CachedPlanner(inner).plan("a cat")
    assert len(inner.calls) == 1


def test_retry_policy_is_not_part_of_the_key(cache_root: Path, server: OpenAIServer) -> None:
    a = OpenAIPlanner(base_url=server.base_url, api_key=SECRET, retry=RetryPolicy(retries=0))
    b = OpenAIPlanner(base_url=server.base_url, api_key="other", retry=RetryPolicy(retries=5))
    assert CachedPlanner(a).key("p") == CachedPlanner(b).key("p")


# --------------------------------------------------------------------------- what the key covers


def test_plans_from_two_servers_are_cached_apart(cache_root: Path) -> None:
    with OpenAIServer() as a, OpenAIServer() as b:
        a.push(a.chat(_plan_json()))
        b.push(b.chat(_plan_json()))
        for server in (a, b, a, b):
            planner = rpg.create_planner(
                "openai", base_url=server.base_url, api_key=SECRET, model="same-model"
            )
            planner.plan("a cat")
        assert len(a.chat_requests) == len(b.chat_requests) == 1
    assert len(list(cache_root.glob("*.json"))) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"base_url": "http://127.0.0.1:9/v1"},
        {"temperature": 0.9},
        {"max_tokens": 512},
        {"model": "other-model"},
        {"strict": False},
    ],
)
def test_openai_key_covers_server_and_answer_changing_options(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {"base_url": "http://127.0.0.1:8/v1", "api_key": SECRET, "model": "m"}
    key = plan_cache_key(OpenAIPlanner(**base), "p")
    assert key == plan_cache_key(OpenAIPlanner(**{**base, "api_key": "another key"}), "p")
    assert key != plan_cache_key(OpenAIPlanner(**{**base, **change}), "p")


@pytest.mark.parametrize(
    "change", [{"host": "http://127.0.0.1:9"}, {"temperature": 0.9}, {"options": {"seed": 3}}]
)
def test_ollama_key_covers_host_and_options(change: dict[str, Any]) -> None:
    from rpg.planners.ollama import OllamaPlanner

    base: dict[str, Any] = {"host": "http://127.0.0.1:8", "model": "m"}
    key = plan_cache_key(OllamaPlanner(**base), "p")
    assert key == plan_cache_key(OllamaPlanner(**base), "p")
    assert key != plan_cache_key(OllamaPlanner(**{**base, **change}), "p")


def test_key_of_a_wrapped_planner_is_the_planner_key_and_holds_no_secret() -> None:
    planner = OpenAIPlanner(base_url="http://user:pw@127.0.0.1:8/v1?token=t", api_key=SECRET)
    identity = planner_identity(CachedPlanner(planner))
    assert identity["server"] == "http://127.0.0.1:8/v1"
    assert SECRET not in repr(identity) and "pw" not in repr(identity)
    assert CachedPlanner(planner).key("p") == plan_cache_key(planner, "p")
    # any planner without cache_identity() is keyed by its id and model
    assert planner_identity(CountingPlanner("m9")) == {"planner": "counting/m9", "model": "m9"}
