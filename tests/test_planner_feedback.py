"""Review and edit planning against loopback OpenAI and Ollama servers, through the real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from planner_helpers import decode_b64_image, isolate_env, one_row
from rpg.errors import PlannerError
from rpg.models import RegionPlan
from rpg.planners.cache import CachedPlanner
from rpg.planners.feedback import (
    EDIT_FORMAT,
    REVIEW_FORMAT,
    EditPlan,
    MultimodalPlanner,
    Review,
    as_multimodal,
    parse_edit_reply,
    parse_review_reply,
)
from rpg.planners.hf import HFPlanner
from rpg.planners.ollama import OllamaPlanner
from rpg.planners.openai import OpenAIPlanner
from rpg.planners.rules import RulesPlanner
from rpg.planners.transport import RetryPolicy
from servers import OllamaServer, OpenAIServer

PROMPT = "a red apple on the left and a blue mug on the right"
PLAN = RegionPlan.from_split_ratio(
    "1,1",
    ["a red apple on a table", "a blue mug on a table"],
    base_prompt="still life on a table",
)
REVISED: dict[str, Any] = {
    "rows": one_row(
        ("a large shiny red apple on a wooden table", 2),
        ("a cobalt blue ceramic mug on a wooden table", 1),
    ),
    "base_prompt": "still life on a wooden table",
    "base_ratio": 0.2,
}


def gradient(width: int = 24, height: int = 16) -> Image.Image:
    """An image whose every pixel differs, so a decoded copy can be compared exactly."""
    x = np.arange(width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.arange(height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x * 10, y * 15, (x + y) * 3], axis=-1), "RGB")


def decode(data: str) -> Image.Image:
    image = decode_b64_image(data)
    assert image.format == "PNG"
    return image


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    isolate_env(monkeypatch, tmp_path, "OPENAI_API_KEY", "OPENAI_BASE_URL", "OLLAMA_HOST")


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as s:
        yield s


@pytest.fixture
def ollama_server() -> Iterator[OllamaServer]:
    with OllamaServer() as s:
        yield s


def openai_planner(server: OpenAIServer, **kw: Any) -> OpenAIPlanner:
    retry = RetryPolicy(retries=1, base_delay=0.01, sleep=lambda s: None)
    return OpenAIPlanner(
        "vision-model", base_url=server.base_url, api_key="k", timeout=5, retry=retry, **kw
    )


def ollama_planner(server: OllamaServer, **kw: Any) -> OllamaPlanner:
    retry = RetryPolicy(retries=1, base_delay=0.01, sleep=lambda s: None)
    return OllamaPlanner("qwen2.5vl", host=server.host, timeout=5, retry=retry, **kw)


# --------------------------------------------------------------------------- review


def test_review_sends_the_png_prompt_and_plan_and_reads_done(openai_server: OpenAIServer) -> None:
    image = gradient()
    openai_server.push(openai_server.chat(json.dumps({"critique": "fine", "done": True})))
    review = openai_planner(openai_server).review(PROMPT, PLAN, image)

    assert review == Review(critique="fine", done=True, plan=None)
    (request,) = openai_server.chat_requests
    body = request.json
    fmt = body["response_format"]["json_schema"]
    assert fmt["name"] == REVIEW_FORMAT.name
    assert fmt["schema"] == REVIEW_FORMAT.schema(strict=True)
    text, picture = body["messages"][1]["content"]
    assert PROMPT in text["text"]
    assert PLAN.model_dump_json() in text["text"]
    url = picture["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = decode(url.split(",", 1)[1])
    assert sent.size == image.size
    assert np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(image))


def test_review_returns_a_validated_revised_plan(openai_server: OpenAIServer) -> None:
    reply = {"critique": "the mug is red", "done": False, "plan": REVISED}
    openai_server.push(openai_server.chat(f"<think>hmm</think>```json\n{json.dumps(reply)}\n```"))
    review = openai_planner(openai_server).review(PROMPT, PLAN, gradient())

    assert not review.done
    assert review.critique == "the mug is red"
    assert review.plan == RegionPlan.model_validate(REVISED)
    assert review.plan is not None and review.plan.to_split_ratio() == "2,1"


def test_invalid_revised_plan_is_sent_back_then_valid_one_used(
    openai_server: OpenAIServer,
) -> None:
    bad = json.loads(json.dumps(REVISED))
    bad["rows"][0]["regions"][1]["prompt"] = "   "
    openai_server.push(
        openai_server.chat(json.dumps({"critique": "x", "done": False, "plan": bad})),
        openai_server.chat(json.dumps({"critique": "x", "done": False, "plan": REVISED})),
    )
    review = openai_planner(openai_server).review(PROMPT, PLAN, gradient())

    assert review.plan == RegionPlan.model_validate(REVISED)
    _, second = openai_server.chat_requests
    messages = second.json["messages"]
    assert messages[-2]["role"] == "assistant"
    assert json.loads(messages[-2]["content"])["plan"] == bad
    assert messages[-1]["role"] == "user"
    assert "region prompt must not be empty" in messages[-1]["content"]


def test_not_done_without_a_plan_fails_after_retries_with_the_raw_reply(
    ollama_server: OllamaServer,
) -> None:
    reply = json.dumps({"critique": "bad", "done": False, "plan": None})
    ollama_server.push(*[ollama_server.chat(reply) for _ in range(3)])
    planner = ollama_planner(ollama_server, validation_retries=2)
    with pytest.raises(PlannerError, match="no valid review in 3 attempts") as info:
        planner.review(PROMPT, PLAN, gradient())
    assert info.value.raw == reply
    assert '"done": false must give the revised plan' in str(info.value)
    assert len(ollama_server.chat_requests) == 3


def test_ollama_review_sends_images_and_the_review_schema(ollama_server: OllamaServer) -> None:
    image = gradient(10, 6)
    reply = {"critique": "ok", "done": False, "plan": REVISED}
    ollama_server.push(ollama_server.chat(json.dumps(reply)))
    review = ollama_planner(ollama_server).review(PROMPT, PLAN, image)

    assert review.plan == RegionPlan.model_validate(REVISED)
    body = ollama_server.chat_requests[0].json
    assert body["format"] == REVIEW_FORMAT.schema()
    system, user = body["messages"]
    assert "images" not in system
    (encoded,) = user["images"]
    assert np.array_equal(np.asarray(decode(encoded).convert("RGB")), np.asarray(image))


def test_review_falls_back_to_json_in_text_when_structured_output_is_rejected(
    openai_server: OpenAIServer,
) -> None:
    # json_schema, json_object with the schema, and json_object are each refused once
    openai_server.push(
        openai_server.error(400, "response_format json_schema is not supported"),
        openai_server.error(400, "response_format json_object is not supported"),
        openai_server.error(400, "response_format is not supported"),
        openai_server.chat('Sure! {"critique": "good", "done": true, "plan": null}'),
    )
    review = openai_planner(openai_server).review(PROMPT, PLAN, gradient())
    assert review.done
    assert "response_format" not in openai_server.chat_requests[-1].json


def test_done_reply_drops_a_plan_and_missing_done_follows_the_plan() -> None:
    assert parse_review_reply(json.dumps({"done": True, "plan": REVISED})).plan is None
    review = parse_review_reply(json.dumps({"critique": "c", "plan": REVISED}))
    assert not review.done and review.plan is not None
    with pytest.raises(PlannerError, match="no JSON object"):
        parse_review_reply("looks good to me")


# --------------------------------------------------------------------------- edit


def test_edit_selects_regions_of_the_given_plan(ollama_server: OllamaServer) -> None:
    reply = {
        "explanation": "the mug is region 1",
        "plan": None,
        "changes": [{"index": 1, "prompt": "a green teapot on a table"}],
    }
    ollama_server.push(ollama_server.chat(json.dumps(reply)))
    image = gradient()
    edit = ollama_planner(ollama_server).plan_edit(
        "replace the mug with a green teapot", image, PLAN
    )

    assert edit.indices == [1]
    assert edit.plan == PLAN
    new = edit.edited_plan()
    assert new.prompts == ["a red apple on a table", "a green teapot on a table"]
    assert new.base_prompt == PLAN.base_prompt and new.to_split_ratio() == PLAN.to_split_ratio()
    body = ollama_server.chat_requests[0].json
    assert body["format"] == EDIT_FORMAT.schema()
    user = body["messages"][1]
    assert "replace the mug with a green teapot" in user["content"]
    assert "region 1: x 50%–100%" in user["content"]
    assert np.array_equal(np.asarray(decode(user["images"][0]).convert("RGB")), np.asarray(image))


def test_edit_index_out_of_range_is_retried(openai_server: OpenAIServer) -> None:
    def reply(index: int) -> str:
        changes = [{"index": index, "prompt": "a black cat"}]
        return json.dumps({"explanation": "e", "plan": None, "changes": changes})

    openai_server.push(openai_server.chat(reply(5)), openai_server.chat(reply(0)))
    edit = openai_planner(openai_server).plan_edit("make it a black cat", gradient(), PLAN)
    assert edit.indices == [0]
    retry = openai_server.chat_requests[1].json["messages"][-1]["content"]
    assert "region 5 does not exist" in retry and "numbered 0 to 1" in retry
    fmt = openai_server.chat_requests[0].json["response_format"]["json_schema"]
    assert fmt["name"] == EDIT_FORMAT.name


def test_edit_without_a_plan_asks_for_one(openai_server: OpenAIServer) -> None:
    layout = {
        "rows": [
            {"height": 1, "regions": [{"prompt": "blue sky", "width": 1}]},
            {"height": 1, "regions": [{"prompt": "grass", "width": 1}]},
        ],
        "base_prompt": None,
        "base_ratio": 0.3,
    }
    missing = {"explanation": "e", "plan": None, "changes": [{"index": 0, "prompt": "storm"}]}
    good = {**missing, "plan": layout, "changes": [{"index": 0, "prompt": "a stormy sky"}]}
    openai_server.push(
        openai_server.chat(json.dumps(missing)), openai_server.chat(json.dumps(good))
    )
    edit = openai_planner(openai_server).plan_edit("make the sky stormy", gradient(), None)

    assert edit.plan == RegionPlan.model_validate(layout)
    assert edit.edited_plan().prompts == ["a stormy sky", "grass"]
    first, second = openai_server.chat_requests
    assert "No plan is known" in first.json["messages"][1]["content"][0]["text"]
    assert "has no plan" in second.json["messages"][-1]["content"]


def test_edit_reply_validation() -> None:
    dup = {"explanation": "", "changes": [{"index": 0, "prompt": "a"}, {"index": 0, "prompt": "b"}]}
    with pytest.raises(PlannerError, match="more than once"):
        parse_edit_reply(json.dumps(dup), PLAN)
    with pytest.raises(PlannerError, match="changes"):
        parse_edit_reply(json.dumps({"explanation": "", "changes": []}), PLAN)
    # with a known plan, a plan in the reply is ignored: indices refer to the known one
    other = {"explanation": "", "plan": REVISED, "changes": [{"index": 1, "prompt": "x"}]}
    assert parse_edit_reply(json.dumps(other), PLAN).plan == PLAN
    with pytest.raises(PlannerError, match="no plan"):
        EditPlan(explanation="", changes=[{"index": 0, "prompt": "x"}]).edited_plan()


# --------------------------------------------------------------------------- which planners


def test_openai_and_ollama_are_multimodal_even_behind_the_cache(
    openai_server: OpenAIServer, ollama_server: OllamaServer
) -> None:
    o = openai_planner(openai_server)
    assert isinstance(o, MultimodalPlanner)
    assert as_multimodal(CachedPlanner(o)) is o
    assert as_multimodal(ollama_planner(ollama_server)) is not None


@pytest.mark.parametrize(
    "planner",
    [RulesPlanner(), HFPlanner("some/model", device="cpu", constrained=False)],
    ids=["rules", "hf"],
)
def test_text_only_planners_name_the_multimodal_ones(planner: Any) -> None:
    with pytest.raises(PlannerError, match="cannot look at images") as info:
        as_multimodal(planner)
    assert "'openai'" in str(info.value) and "'ollama'" in str(info.value)
