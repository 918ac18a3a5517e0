"""The ollama planner against a loopback server speaking /api/chat, through the real client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from planner_helpers import Sleeps, closed_port, decode_b64_image, isolate_env, one_row
from rpg.errors import ModelNotFoundError, PlannerError
from rpg.planners import template
from rpg.planners.ollama import (
    DEFAULT_NUM_CTX,
    OllamaPlanner,
    normalize_host,
    server_answers,
)
from rpg.planners.schema import plan_schema
from rpg.planners.transport import RetryPolicy
from servers import OllamaServer, Reply

PLAN: dict[str, Any] = {
    "recaption": "Two girls chat at a small round table in a cosy cafe.",
    "entities": [
        {"name": "girl", "attributes": ["red scarf"]},
        {"name": "girl", "attributes": ["green sweater"]},
    ],
    "rows": one_row(
        ("a girl in a red scarf chatting in a cosy cafe", 1),
        ("a girl in a green sweater chatting in a cosy cafe", 1),
    ),
    "base_prompt": "two girls chatting in a cosy cafe",
    "base_ratio": 0.3,
}
PROMPT = "two girls chatting in a cafe"

TEXT_REPLY = """\
**Recaption:** Two girls chat in a cafe.
**Final split ratio:** 1;1
**Base prompt used:** yes
**Regional Prompt:** two girls in a cafe BREAK a girl with a red scarf BREAK a girl in green"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    isolate_env(monkeypatch, tmp_path, "OLLAMA_HOST", "OLLAMA_API_KEY")


@pytest.fixture
def server() -> Iterator[OllamaServer]:
    with OllamaServer() as s:
        yield s


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make(server: OllamaServer, sleeps: Sleeps, **kw: Any) -> OllamaPlanner:
    options: dict[str, Any] = {
        "model": "qwen-test:1b",
        "host": server.host,
        "timeout": 5.0,
        "retry": RetryPolicy(retries=2, base_delay=0.01, sleep=sleeps),
    }
    options.update(kw)
    return OllamaPlanner(**options)


def test_structured_reply_and_what_was_sent(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    result = make(server, sleeps).plan(PROMPT)

    assert result.plan.prompts == [r["prompt"] for r in PLAN["rows"][0]["regions"]]
    assert result.plan.base_prompt == "two girls chatting in a cosy cafe"
    assert result.planner == "ollama/qwen-test:1b"
    (request,) = server.chat_requests
    body = request.json
    assert body["model"] == "qwen-test:1b"
    assert body["stream"] is False
    assert body["format"] == plan_schema()
    assert body["options"]["num_ctx"] == DEFAULT_NUM_CTX
    assert body["options"]["temperature"] == 0.2
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_user_options_override_defaults(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    make(server, sleeps, options={"num_ctx": 4096, "seed": 3}).plan(PROMPT)
    options = server.chat_requests[0].json["options"]
    assert options["num_ctx"] == 4096 and options["seed"] == 3


def test_text_mode_with_thinking(server: OllamaServer, sleeps: Sleeps) -> None:
    decoy = "Final split ratio: 1,1,1,1\nRegional Prompt: a BREAK b BREAK c BREAK d"
    server.push(server.chat(f"<think>{decoy}</think>\n{TEXT_REPLY}", thinking=decoy))
    result = make(server, sleeps, structured=False, think=True).plan(PROMPT)
    assert result.plan.to_split_ratio() == "1;1"
    assert result.plan.base_prompt == "two girls in a cafe"
    body = server.chat_requests[0].json
    assert "format" not in body or body["format"] is None
    assert body["think"] is True
    assert body["messages"][0]["content"] == template.INSTRUCTIONS


def test_invalid_then_valid(server: OllamaServer, sleeps: Sleeps) -> None:
    bad = {**PLAN, "rows": []}
    server.push(server.chat(json.dumps(bad)), server.chat(json.dumps(PLAN)))
    result = make(server, sleeps).plan(PROMPT)
    assert len(result.plan.regions) == 2
    messages = server.chat_requests[1].json["messages"]
    assert messages[-2]["role"] == "assistant"
    assert "rows" in messages[-1]["content"]


def test_always_invalid(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(*[server.chat('{"recaption": "only this"}') for _ in range(2)])
    with pytest.raises(PlannerError, match="2 attempts") as info:
        make(server, sleeps, validation_retries=1).plan(PROMPT)
    assert info.value.raw == '{"recaption": "only this"}'
    assert len(server.chat_requests) == 2


def test_server_error_then_success(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(server.error(500, "llama runner crashed"), server.chat(json.dumps(PLAN)))
    make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 2
    assert len(sleeps.waits) == 1


def test_busy_server_is_retried_then_reported(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(*[server.error(503, "server busy") for _ in range(3)])
    with pytest.raises(PlannerError, match=r"HTTP 503\) 3 times: server busy"):
        make(server, sleeps).plan(PROMPT)
    assert len(sleeps.waits) == 2


def test_timeout(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN), delay=5), server.chat(json.dumps(PLAN), delay=5))
    policy = RetryPolicy(retries=1, base_delay=0.01, sleep=sleeps)
    with pytest.raises(PlannerError, match=r"did not answer within 0\.2 s"):
        make(server, sleeps, timeout=0.2, retry=policy).plan(PROMPT)
    # The client gave up after 0.2 s; on a loaded machine the server may record the retry later.
    waited = time.monotonic() + 5
    while len(server.chat_requests) < 2 and time.monotonic() < waited:
        time.sleep(0.01)
    assert len(server.chat_requests) == 2


def test_model_not_pulled(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(server.error(404, "model 'qwen-test:1b' not found, try pulling it first"))
    with pytest.raises(ModelNotFoundError, match=r"run `ollama pull qwen-test:1b`") as info:
        make(server, sleeps).plan(PROMPT)
    assert isinstance(info.value, PlannerError)
    assert len(server.chat_requests) == 1


def test_no_server(sleeps: Sleeps) -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    planner = OllamaPlanner(host=host, retry=RetryPolicy(retries=1, base_delay=0.01, sleep=sleeps))
    with pytest.raises(PlannerError, match=rf"no Ollama server at {host}.*`ollama serve`"):
        planner.plan(PROMPT)


def test_format_rejected_falls_back_to_text(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(
        server.error(400, "invalid format: json schema not supported"), server.chat(TEXT_REPLY)
    )
    result = make(server, sleeps).plan(PROMPT)
    assert result.plan.to_split_ratio() == "1;1"
    assert server.chat_requests[1].json.get("format") is None


def test_image_goes_in_the_user_message(server: OllamaServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    make(server, sleeps).plan(PROMPT, image=Image.new("RGB", (5, 7), (0, 0, 255)))
    user = server.chat_requests[0].json["messages"][1]
    (encoded,) = user["images"]
    decoded = decode_b64_image(encoded)
    assert decoded.format == "PNG" and decoded.size == (5, 7)
    assert "images" not in server.chat_requests[0].json["messages"][0]


def test_host_from_environment(
    server: OllamaServer, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{server.port}")
    server.push(server.chat(json.dumps(PLAN)))
    planner = OllamaPlanner(retry=RetryPolicy(sleep=sleeps))
    assert planner.host == server.url
    planner.plan(PROMPT)
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("example.org:8080", "http://example.org:8080"),
        ("https://ollama.example.org", "https://ollama.example.org:443"),
        ("http://10.0.0.2:11434/", "http://10.0.0.2:11434"),
    ],
)
def test_normalize_host(given: str | None, expected: str) -> None:
    assert normalize_host(given) == expected


def test_server_answers(server: OllamaServer) -> None:
    assert server_answers(server.host, timeout=2)
    assert not server_answers(f"127.0.0.1:{closed_port()}", timeout=2)
    with OllamaServer(routes={"GET /api/version": Reply(500, "down")}) as broken:
        assert not server_answers(broken.host, timeout=2)


# --------------------------------------------------------------------------- fail fast, bounded


def test_nothing_listening_fails_at_once_without_retries(sleeps: Sleeps) -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    planner = OllamaPlanner(host=host, retry=RetryPolicy(retries=3, base_delay=0.01, sleep=sleeps))
    with pytest.raises(PlannerError) as info:
        planner.plan(PROMPT)
    message = str(info.value)
    assert host in message and "`ollama serve`" in message
    assert len(message.splitlines()) == 1
    assert sleeps.waits == []  # connection refused: nothing to wait for


class FakeClock:
    """A monotonic clock that advances only when the retry policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_default_retries_stop_once_the_timeout_has_passed_in_all(server: OllamaServer) -> None:
    planner = OllamaPlanner(model="m", host=server.host, timeout=10.0)
    assert planner.retry.deadline == 10.0  # the default bounds the whole call
    clock = FakeClock()
    planner.retry = RetryPolicy(
        retries=50, base_delay=4.0, max_delay=4.0, deadline=10.0, sleep=clock.sleep, clock=clock
    )
    server.push(*[server.error(503, "server busy") for _ in range(50)])
    with pytest.raises(PlannerError, match=r"HTTP 503\) (\d) times: server busy") as info:
        planner.plan(PROMPT)
    attempts = len(server.chat_requests)
    assert f"{attempts} times" in str(info.value)
    assert attempts == len(clock.waits) + 1 <= 5  # not 51: waits of 2-4 s, 10 s in all
    assert sum(clock.waits) < 10.0


def test_format_refused_with_a_server_error_falls_back_without_retries(
    server: OllamaServer, sleeps: Sleeps
) -> None:
    server.push(server.error(500, "failed to build grammar from format"), server.chat(TEXT_REPLY))
    result = make(server, sleeps).plan(PROMPT)
    assert result.plan.to_split_ratio() == "1;1"
    assert sleeps.waits == []
    assert server.chat_requests[1].json.get("format") is None


def test_an_error_that_only_says_schema_is_not_a_fallback(
    server: OllamaServer, sleeps: Sleeps
) -> None:
    server.push(server.error(400, "invalid tool schema"))
    with pytest.raises(PlannerError, match=r"rejected the request \(HTTP 400\): invalid tool"):
        make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 1
