"""The planner building blocks: one module per job, one reasoning stripper, one remote chat base."""

from __future__ import annotations

import json

import pytest

from rpg.planners import parsing, reasoning, remote, template
from rpg.planners.chat import ChatPlanner, ChatRequest, ReplyMode
from rpg.planners.hf import HFPlanner
from rpg.planners.ollama import OllamaPlanner
from rpg.planners.openai import OpenAIPlanner
from rpg.planners.remote import RemoteChatPlanner, public_url

PLAN = {
    "recaption": "a cat",
    "entities": [],
    "rows": [{"height": 1, "regions": [{"prompt": "a cat on a mat", "width": 1}]}],
    "base_prompt": None,
    "base_ratio": 0.3,
}
TEXT = "Final split ratio: 1,1\nRegional Prompt: a cat BREAK a dog"


@pytest.mark.parametrize(
    "wrap",
    [
        "<think>first draft: Final split ratio: 1,1,1</think>\n{answer}",
        "the model's template opened the block itself</think>\n{answer}",
        "<thinking>\nnested <think>idea</think> more\n</thinking>{answer}",
        "<think>\n{answer}",  # never closed: only the tag goes
    ],
)
def test_one_reasoning_stripper_serves_json_and_text_replies(wrap: str) -> None:
    as_json = wrap.format(answer=json.dumps(PLAN))
    as_text = wrap.format(answer=TEXT)
    assert "<think" not in parsing.strip_reasoning(as_json)
    assert parsing.first_json_object(parsing.strip_reasoning(as_json)) == PLAN
    assert parsing.parse_plan_reply(as_json, prompt="p").plan.prompts == ["a cat on a mat"]
    assert template.parse_reply(as_text, prompt="p").plan.prompts == ["a cat", "a dog"]
    # the text parser uses the very same function
    assert template.strip_reasoning is parsing.strip_reasoning


def test_text_without_reasoning_is_returned_unchanged() -> None:
    text = "  Final split ratio: 1\n"
    assert parsing.strip_reasoning(text) is text


def test_no_compatibility_shim_and_one_home_for_reasoning() -> None:
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("rpg.planners.structured")
    assert parsing.strip_reasoning is reasoning.strip_reasoning
    assert template.strip_reasoning is reasoning.strip_reasoning


def test_openai_and_ollama_share_the_remote_chat_base_and_hf_does_not() -> None:
    assert issubclass(OpenAIPlanner, RemoteChatPlanner)
    assert issubclass(OllamaPlanner, RemoteChatPlanner)
    assert issubclass(HFPlanner, ChatPlanner) and not issubclass(HFPlanner, RemoteChatPlanner)
    # the ladders: JSON Schema first, the text template last
    for cls in (OpenAIPlanner, OllamaPlanner, HFPlanner):
        assert cls.reply_modes[0] is ReplyMode.SCHEMA and cls.reply_modes[-1] is ReplyMode.TEXT
    assert ReplyMode.JSON_WITH_SCHEMA in OpenAIPlanner.reply_modes


def test_chat_request_knows_whether_it_asks_for_structure() -> None:
    assert ChatRequest([], ReplyMode.JSON).structured
    assert not ChatRequest([], ReplyMode.TEXT).structured


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:secret@127.0.0.1:8080/v1/?key=abc#x", "http://127.0.0.1:8080/v1"),
        ("https://api.example.org/v1", "https://api.example.org/v1"),
        ("http://[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_public_url_drops_credentials(url: str, expected: str) -> None:
    assert public_url(url) == expected
    assert remote.public_url is public_url
