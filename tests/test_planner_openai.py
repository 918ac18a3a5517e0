"""The openai planner against a loopback OpenAI-compatible server, through the real client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from planner_helpers import Sleeps, closed_port, decode_b64_image, isolate_env, one_row
from rpg.cli import main
from rpg.errors import ConfigurationError, ModelNotFoundError, PlannerError
from rpg.models import PlanResult
from rpg.planners import template
from rpg.planners.openai import PLACEHOLDER_KEY, OpenAIPlanner, is_reasoning_model
from rpg.planners.schema import PlanReply, plan_schema
from rpg.planners.transport import RetryPolicy, parse_retry_after
from servers import LlamaCppServer, OpenAIServer

SECRET = "sk-test-secret-value-0123456789"

PLAN: dict[str, Any] = {
    "recaption": "A red apple on the left and a blue mug on the right, on a wooden table.",
    "entities": [
        {"name": "apple", "attributes": ["red"]},
        {"name": "mug", "attributes": ["blue"]},
    ],
    "rows": one_row(
        ("a shiny red apple on a wooden table", 1),
        ("a blue ceramic mug on a wooden table", 2),
    ),
    "base_prompt": "still life on a wooden table",
    "base_ratio": 0.25,
}
PROMPT = "a red apple and a blue mug"

TEXT_REPLY = """\
Recaption: A red apple beside a blue mug.
Key entities:
- apple: red
- mug: blue
Final split ratio: 1,1
Base prompt used: no
Regional Prompt: a red apple on a table BREAK a blue mug on a table"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    isolate_env(monkeypatch, tmp_path, "OPENAI_API_KEY", "OPENAI_BASE_URL", "OLLAMA_HOST")


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as s:
        yield s


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make(server: OpenAIServer, sleeps: Sleeps, **kw: Any) -> OpenAIPlanner:
    options: dict[str, Any] = {
        "model": "test-model",
        "base_url": server.base_url,
        "api_key": SECRET,
        "timeout": 5.0,
        "retry": RetryPolicy(retries=2, base_delay=0.01, sleep=sleeps),
    }
    options.update(kw)
    return OpenAIPlanner(**options)


# --------------------------------------------------------------------------- structured output


def test_structured_reply_becomes_a_plan(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    result = make(server, sleeps).plan(PROMPT)

    assert result.plan.prompts == [r["prompt"] for r in PLAN["rows"][0]["regions"]]
    assert result.plan.to_split_ratio() == "1,2"
    assert result.plan.base_prompt == "still life on a wooden table"
    assert result.plan.base_ratio == 0.25
    assert result.recaption.original_prompt == PROMPT
    assert [e.name for e in result.recaption.entities] == ["apple", "mug"]
    assert result.planner == "openai/test-model"

    (request,) = server.chat_requests
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    body = request.json
    assert body["model"] == "test-model"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == plan_schema(strict=True)
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith(template.INSTRUCTIONS.strip()[:60])
    assert PROMPT in body["messages"][1]["content"]
    assert "temperature" in body and "max_tokens" in body
    assert "max_completion_tokens" not in body


def test_strict_schema_satisfies_openai_rules() -> None:
    schema = plan_schema(strict=True)
    seen = 0

    def check(node: Any) -> None:
        nonlocal seen
        if isinstance(node, dict):
            assert "$ref" not in node
            assert not {"minimum", "maxLength", "minItems", "default"} & node.keys()
            if node.get("type") == "object":
                seen += 1
                assert node["additionalProperties"] is False
                assert sorted(node["required"]) == sorted(node["properties"])
            for value in node.values():
                check(value)
        elif isinstance(node, list):
            for value in node:
                check(value)

    check(schema)
    assert seen == 5  # plan, entity, row, region, layer
    # the schema accepts exactly what the reply model accepts
    PlanReply.model_validate(PLAN)


def test_fallback_to_text_template_when_response_format_is_rejected(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    # a server that takes no response_format at all: json_schema, json_object with the schema
    # and plain json_object are each refused once, then the text template is used
    server.push(
        server.error(400, "response_format type json_schema is not supported by this server"),
        server.error(400, "response_format type json_object is not supported by this server"),
        server.error(400, "response_format is not supported by this server"),
        server.chat(TEXT_REPLY),
    )
    planner = make(server, sleeps)
    result = planner.plan(PROMPT)

    assert result.plan.prompts == ["a red apple on a table", "a blue mug on a table"]
    *rejected, second = (r.json for r in server.chat_requests)
    assert [r["response_format"]["type"] for r in rejected] == [
        "json_schema",
        "json_object",
        "json_object",
    ]
    assert "response_format" not in second
    assert sleeps.waits == []
    assert second["messages"][0]["content"] == template.INSTRUCTIONS
    assert planner.structured is False  # remembered: the next plan goes straight to text
    server.push(server.chat(TEXT_REPLY))
    planner.plan("another prompt")
    assert "response_format" not in server.chat_requests[-1].json


def test_other_bad_requests_are_errors_not_fallbacks(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.error(400, "messages: too many tokens"))
    with pytest.raises(PlannerError, match=r"rejected the request \(HTTP 400\).*too many tokens"):
        make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 1


# --------------------------------------------------------------------------- reasoning


def test_text_reply_with_think_block_and_reasoning_content(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    decoy = "Final split ratio: 1,1,1\nRegional Prompt: x BREAK y BREAK z"
    server.push(server.chat(f"<think>\n{decoy}\n</think>\n{TEXT_REPLY}", reasoning_content=decoy))
    result = make(server, sleeps, structured=False).plan(PROMPT)
    assert result.plan.to_split_ratio() == "1,1"
    assert "<think>" not in result.raw
    assert "response_format" not in server.chat_requests[0].json


def test_reasoning_models_get_their_own_parameters(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    make(server, sleeps, model="o3-mini", reasoning_effort="low").plan(PROMPT)
    body = server.chat_requests[0].json
    assert body["messages"][0]["role"] == "developer"
    assert "temperature" not in body
    assert "max_tokens" not in body
    assert body["max_completion_tokens"] == 2048
    assert body["reasoning_effort"] == "low"


def test_reasoning_that_eats_the_token_budget(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.chat(None, reasoning_content="hmm " * 50, finish_reason="length"))
    with pytest.raises(PlannerError, match=r"used all 2048 tokens.*raise max_tokens"):
        make(server, sleeps, model="o1").plan(PROMPT)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("o1", True),
        ("o3-mini", True),
        ("o4-mini-2025-04-16", True),
        ("gpt-5", True),
        ("openai/gpt-5-mini", True),
        ("gpt-4o-mini", False),
        ("deepseek-r1", False),
        ("ollama-o1x", False),
    ],
)
def test_reasoning_model_names(name: str, expected: bool) -> None:
    assert is_reasoning_model(name) is expected


# --------------------------------------------------------------------------- validation loop


def test_invalid_then_valid_reply_is_retried_with_the_error(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    bad = {**PLAN, "rows": [{"height": 1, "regions": [{"prompt": "  ", "width": 1}]}]}
    server.push(server.chat(json.dumps(bad)), server.chat(json.dumps(PLAN)))
    result = make(server, sleeps).plan(PROMPT)

    assert result.plan.to_split_ratio() == "1,2"
    second = server.chat_requests[1].json["messages"]
    assert second[-2] == {"role": "assistant", "content": json.dumps(bad)}
    assert second[-1]["role"] == "user"
    assert "region prompt must not be empty" in second[-1]["content"]
    assert sleeps.waits == []  # a validation retry is not a transport retry


def test_always_invalid_raises_planner_error_with_raw_reply(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    nonsense = "I would love to help, but here is a poem instead."
    server.push(*[server.chat(nonsense) for _ in range(3)])
    with pytest.raises(PlannerError) as info:
        make(server, sleeps, validation_retries=2).plan(PROMPT)
    assert info.value.raw == nonsense
    assert "3 attempts" in str(info.value)
    assert len(server.chat_requests) == 3
    assert server.pending == 0


def test_truncated_json_is_reported_as_such(server: OpenAIServer, sleeps: Sleeps) -> None:
    cut = json.dumps(PLAN)[:80]
    server.push(server.chat(cut, finish_reason="length"))
    with pytest.raises(PlannerError, match="not complete, valid JSON") as info:
        make(server, sleeps, validation_retries=0).plan(PROMPT)
    assert info.value.raw == cut


# --------------------------------------------------------------------------- transport retries


def test_server_error_then_success(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.error(500, "boom", type="server_error"), server.chat(json.dumps(PLAN)))
    result = make(server, sleeps).plan(PROMPT)
    assert result.plan.to_split_ratio() == "1,2"
    assert len(server.chat_requests) == 2
    (wait,) = sleeps.waits
    assert 0.005 <= wait <= 0.01  # first backoff step: between half and all of base_delay


def test_persistent_server_error_gives_up_after_bounded_retries(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    server.push(*[server.error(503, "overloaded", type="server_error") for _ in range(3)])
    with pytest.raises(PlannerError, match=r"HTTP 503.*3 times"):
        make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 3
    assert len(sleeps.waits) == 2
    assert sleeps.waits[1] > sleeps.waits[0] / 2  # grows (with jitter) rather than shrinking


def test_rate_limit_honours_retry_after(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(
        server.error(429, "slow down", type="rate_limit_error", headers={"retry-after": "1.5"}),
        server.chat(json.dumps(PLAN)),
    )
    make(server, sleeps).plan(PROMPT)
    assert sleeps.waits == [1.5]


def test_retry_after_is_capped(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(
        server.error(429, "slow down", type="rate_limit_error", headers={"retry-after": "3600"}),
        server.chat(json.dumps(PLAN)),
    )
    policy = RetryPolicy(retries=1, base_delay=0.01, max_retry_after=2.0, sleep=sleeps)
    make(server, sleeps, retry=policy).plan(PROMPT)
    assert sleeps.waits == [2.0]


def test_quota_exhausted_is_not_retried(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.error(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(PlannerError, match="429"):
        make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 1


def test_timeout_is_retried_then_reported(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN), delay=5), server.chat(json.dumps(PLAN), delay=5))
    policy = RetryPolicy(retries=1, base_delay=0.01, sleep=sleeps)
    with pytest.raises(PlannerError, match=r"did not answer within 0.2 s \(2 attempts\)"):
        make(server, sleeps, timeout=0.2, retry=policy).plan(PROMPT)
    assert len(sleeps.waits) == 1


def test_connection_refused(sleeps: Sleeps) -> None:
    planner = OpenAIPlanner(
        base_url=f"http://127.0.0.1:{closed_port()}/v1",
        api_key=SECRET,
        retry=RetryPolicy(retries=1, base_delay=0.01, sleep=sleeps),
    )
    with pytest.raises(PlannerError, match=r"could not connect to http://127\.0\.0\.1.*--base-url"):
        planner.plan(PROMPT)
    assert len(sleeps.waits) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"retry-after": "x"}, None),
        ({}, None),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
    ],
)
def test_parse_retry_after(value: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(value) == expected


# --------------------------------------------------------------------------- keys and errors


def test_rejected_key_says_what_to_set_and_never_shows_the_key(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    server.push(server.error(401, f"Incorrect API key provided: {SECRET[:8]}...", type="auth"))
    with pytest.raises(PlannerError) as info:
        make(server, sleeps).plan(PROMPT)
    err = info.value
    assert isinstance(err, ConfigurationError)
    assert "API key was rejected" in str(err) and "OPENAI_API_KEY" in str(err)
    assert SECRET not in str(err) and SECRET[:8] not in str(err)
    assert len(server.chat_requests) == 1  # a bad key is not retried
    assert SECRET not in repr(make(server, sleeps))


def test_missing_model_is_model_not_found(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.error(404, "The model `nope` does not exist", code="model_not_found"))
    with pytest.raises(ModelNotFoundError, match="has no model 'nope'"):
        make(server, sleeps, model="nope").plan(PROMPT)


def test_no_key_and_no_base_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"set OPENAI_API_KEY.*--base-url"):
        OpenAIPlanner()


def test_local_server_without_key_gets_a_placeholder(server: OpenAIServer, sleeps: Sleeps) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    OpenAIPlanner(base_url=server.base_url, retry=RetryPolicy(sleep=sleeps)).plan(PROMPT)
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"


def test_key_from_environment(
    server: OpenAIServer, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    server.push(server.chat(json.dumps(PLAN)))
    OpenAIPlanner(retry=RetryPolicy(sleep=sleeps)).plan(PROMPT)
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"


# --------------------------------------------------------------------------- images


def test_image_is_sent_as_base64_png(server: OpenAIServer, sleeps: Sleeps) -> None:
    image = Image.new("RGB", (12, 8), (200, 10, 30))
    server.push(server.chat(json.dumps(PLAN)))
    make(server, sleeps).plan(PROMPT, image=image)

    user = server.chat_requests[0].json["messages"][1]
    text_part, image_part = user["content"]
    assert text_part["type"] == "text" and PROMPT in text_part["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = decode_b64_image(url.split(",", 1)[1])
    assert decoded.format == "PNG"
    assert decoded.size == (12, 8)
    assert decoded.convert("RGB").getpixel((3, 3)) == (200, 10, 30)


# --------------------------------------------------------------------------- the command line


def test_cli_plans_against_a_local_server(
    server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.push(server.chat(json.dumps(PLAN)))
    code = main(
        [
            "plan",
            "two girls chatting in a cafe",
            "--planner",
            "openai",
            "--json",
            "--base-url",
            server.base_url,
            "--model",
            "local",
        ]
    )
    assert code == 0
    result = PlanResult.model_validate_json(capsys.readouterr().out)
    assert result.plan.to_split_ratio() == "1,2"
    assert result.planner == "openai/local"
    assert server.chat_requests[0].json["model"] == "local"


def test_cli_without_key_or_server_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "two girls chatting in a cafe", "--planner", "openai"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "OPENAI_API_KEY" in err


# ------------------------------------------------------------------------- a llama.cpp-like server


@pytest.mark.parametrize("flavor", ["cpp", "python"])
def test_llama_cpp_refusal_steps_down_to_json_object_with_schema_without_retries(
    flavor: str, sleeps: Sleeps
) -> None:
    with LlamaCppServer(flavor=flavor) as server:
        server.push(server.chat(json.dumps(PLAN)), server.chat(json.dumps(PLAN)))
        planner = make(server, sleeps)
        result = planner.plan(PROMPT)

        assert result.plan.to_split_ratio() == "1,2"
        refused, accepted = server.chat_requests
        assert refused.json["response_format"]["type"] == "json_schema"
        assert accepted.json["response_format"] == {
            "type": "json_object",
            "schema": plan_schema(),
        }
        # the JSON instructions stay: the reply is still JSON
        assert "REPLY FORMAT" in accepted.json["messages"][0]["content"]
        assert sleeps.waits == []  # HTTP 500, but not retried as a transient failure
        assert planner.structured is not False

        # remembered: the next plan goes straight to json_object
        planner.plan("another prompt")
        assert len(server.chat_requests) == 3
        assert server.chat_requests[-1].json["response_format"]["type"] == "json_object"


def test_llama_cpp_without_schema_support_ends_at_plain_json_object(sleeps: Sleeps) -> None:
    with LlamaCppServer(schema_in_json_object=False) as server:
        server.push(server.chat(json.dumps(PLAN)))
        result = make(server, sleeps).plan(PROMPT)
        assert result.plan.to_split_ratio() == "1,2"
        formats = [r.json["response_format"] for r in server.chat_requests]
        assert [f["type"] for f in formats] == ["json_schema", "json_object", "json_object"]
        assert formats[-1] == {"type": "json_object"}
        assert sleeps.waits == []


@pytest.mark.parametrize("status", [400, 422, 500, 503])
def test_response_format_refusal_with_any_status_is_not_retried(
    server: OpenAIServer, sleeps: Sleeps, status: int
) -> None:
    server.push(
        server.error(status, "unsupported value for 'response_format.type': json_schema"),
        server.chat(json.dumps(PLAN)),
    )
    make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 2
    assert server.chat_requests[1].json["response_format"]["type"] == "json_object"
    assert sleeps.waits == []


def test_an_error_that_only_says_schema_is_not_a_fallback(
    server: OpenAIServer, sleeps: Sleeps
) -> None:
    server.push(server.error(400, "invalid schema for function 'lookup': unknown type"))
    with pytest.raises(PlannerError, match=r"rejected the request \(HTTP 400\).*invalid schema"):
        make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 1

    # a server failure that mentions a schema is retried as the failure it is, then reported
    server.push(*[server.error(500, "schema cache corrupted", type="server_error")] * 3)
    with pytest.raises(PlannerError, match=r"HTTP 500\) 3 times: .*schema cache corrupted"):
        make(server, sleeps).plan(PROMPT)
    assert len(server.chat_requests) == 4
    assert all(r.json["response_format"]["type"] == "json_schema" for r in server.chat_requests)
