"""Planners answering with boxes: the text parser's box replies, the JSON layers, the servers.

The replies below are written for these tests in the shapes models print: this project's own
``Layers:`` section, and the ``(prompt, [x, y, width, height])`` lists with a ``Background
prompt:`` line that the LLM-grounded layout methods ask for (pixels of a 512 × 512 canvas, or
fractions), wrapped in the usual noise (reasoning blocks, code fences, markdown, prose).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from planner_helpers import Sleeps, isolate_env
from rpg.errors import PlannerError
from rpg.models import MAX_LAYERS
from rpg.planners import template
from rpg.planners.ollama import OllamaPlanner
from rpg.planners.openai import OpenAIPlanner
from rpg.planners.parsing import parse_plan_reply
from rpg.planners.schema import PlanReply, plan_schema
from rpg.planners.template import parse_reply
from rpg.planners.transport import RetryPolicy
from servers import OllamaServer, OpenAIServer

PROMPT = "a red kite above a boy on a windy beach"

OBJECTS_512 = """\
Objects: [('a red kite with a long tail', [64, 32, 128, 96]), \
('a boy in a yellow raincoat holding a string', [288, 256, 96, 224])]
Background prompt: a windy beach under a pale blue sky
Negative prompt: blurry, extra limbs"""

OBJECTS_STATED = """\
The image is 1024x768 pixels.
Objects: [("a red kite with a long tail", [128, 0, 256, 192]), \
("a boy in a yellow raincoat holding a string", [512, 384, 256, 384])]
Background prompt: a windy beach under a pale blue sky"""

OBJECTS_UNIT = """\
Sure! Here is the layout.

```python
[
    ('a red kite with a long tail', [0.125, 0.0625, 0.25, 0.1875]),
    ('a boy in a yellow raincoat holding a string', [0.5625, 0.5, 0.1875, 0.4375]),
]
```
**Background prompt:** a windy beach under a pale blue sky"""

OBJECTS_THINK = """\
<think>The kite should be high up, so y is small. The boy stands on the sand.
Maybe ('kite', [1, 2, 3]) ... no, let me write it properly.</think>
Caption: a red kite above a boy on a windy beach
Objects: [('a red kite with a long tail', [64, 32, 128, 96]), \
('a boy in a yellow raincoat holding a string', [288, 256, 96, 224])]
Background prompt: a windy beach under a pale blue sky"""

OURS = """\
Recaption: On a windy beach under a pale blue sky, a red kite with a long tail flies high up \
while a boy in a yellow raincoat holds its string.
Key entities:
- kite: red, long tail
- boy: yellow raincoat, holding a string
Layout: the kite flies in the sky with sky all around it, so layers over a background.
Layers (bottom to top; box = left, top, right, bottom as fractions of the canvas):
- [0.5625, 0.5, 0.75, 0.9375] a boy in a yellow raincoat holding a string
- [0.125, 0.0625, 0.375, 0.25] a red kite with a long tail
Background prompt: a windy beach under a pale blue sky"""

OURS_MARKDOWN = """\
## Layers (bottom to top)
1. **[0.5625, 0.5, 0.75, 0.9375]** a boy in a yellow raincoat
   holding a string
2. a red kite with a long tail: [0.125, 0.0625, 0.375, 0.25]

**Background prompt:**
a windy beach under a pale blue sky"""

KITE = (0.125, 0.0625, 0.375, 0.25)
BOY = (0.5625, 0.5, 0.75, 0.9375)
KITE_PROMPT = "a red kite with a long tail"
BOY_PROMPT = "a boy in a yellow raincoat holding a string"
BACKGROUND = "a windy beach under a pale blue sky"


def _layers(reply: str, **kw: Any) -> list[tuple[str, tuple[float, ...]]]:
    result = parse_reply(reply, prompt=PROMPT, **kw)
    assert result.plan.is_canvas and not result.plan.rows
    assert result.plan.base_prompt == BACKGROUND
    assert result.raw == reply
    out = []
    for layer in result.plan.layers:
        assert layer.box is not None
        out.append((layer.prompt, tuple(round(v, 6) for v in layer.box)))
    return out


@pytest.mark.parametrize(
    "reply",
    [OBJECTS_512, OBJECTS_UNIT, OBJECTS_THINK],
    ids=["pixels-of-512", "unit-fenced-markdown", "think-block"],
)
def test_objects_as_the_layout_papers_print_them(reply: str) -> None:
    # objects in the order listed, later ones drawn over earlier ones
    assert _layers(reply) == [(KITE_PROMPT, KITE), (BOY_PROMPT, BOY)]


def test_objects_in_pixels_of_a_stated_canvas() -> None:
    assert _layers(OBJECTS_STATED) == [
        (KITE_PROMPT, (0.125, 0.0, 0.375, 0.25)),
        (BOY_PROMPT, (0.5, 0.5, 0.75, 1.0)),
    ]


def test_objects_in_pixels_of_the_requests_canvas() -> None:
    reply = (
        "Objects: [('a red kite with a long tail', [128, 64, 256, 192])]\n"
        "Background prompt: a windy beach under a pale blue sky"
    )
    # without a size these boxes would be read on 512 x 512; the request's 1024 x 1024 halves them
    assert _layers(reply, size=(1024, 1024)) == [(KITE_PROMPT, KITE)]
    assert _layers(reply) == [(KITE_PROMPT, (0.25, 0.125, 0.75, 0.5))]


@pytest.mark.parametrize("reply", [OURS, OURS_MARKDOWN], ids=["plain", "markdown-wrapped"])
def test_our_layers_section(reply: str) -> None:
    assert _layers(reply) == [(BOY_PROMPT, BOY), (KITE_PROMPT, KITE)]


def test_recaption_and_entities_come_with_the_layers() -> None:
    result = parse_reply(OURS, prompt=PROMPT)
    assert result.recaption.recaption.startswith("On a windy beach")
    assert [e.name for e in result.recaption.entities] == ["kite", "boy"]


def test_no_background_prompt_leaves_the_whole_prompt_as_background() -> None:
    reply = "Objects: [('a red kite', [64, 32, 128, 96])]\nBackground prompt: none"
    plan = parse_reply(reply, prompt=PROMPT).plan
    assert plan.is_canvas and plan.base_prompt is None
    assert plan.prompts == ["a red kite"]


def test_a_box_a_hair_past_the_edge_is_clipped() -> None:
    reply = "Objects: [('a red kite', [256, 0, 257, 100])]\nBackground prompt: a windy beach"
    (layer,) = parse_reply(reply, prompt=PROMPT).plan.layers
    assert layer.box == (0.5, 0.0, 1.0, 100 / 512)


def test_grid_replies_are_unchanged_by_box_like_words() -> None:
    reply = (
        "Layout: the kite (top, [1 of 2]) and the boy below.\n"
        "Final split ratio: 1;1\nRegional Prompt: a red kite BREAK a boy on a beach"
    )
    plan = parse_reply(reply, prompt=PROMPT).plan
    assert not plan.is_canvas and plan.prompts == ["a red kite", "a boy on a beach"]


FAILURES = [
    ("garbage", "I am sorry, I cannot help with drawing kites today.", "Layers:"),
    (
        "three-numbers",
        "Objects: [('a red kite', [64, 32, 128]), ('a boy', [1, 2, 3, 4])]\nBackground prompt: x",
        "has 3 numbers",
    ),
    (
        "no-area",
        "Objects: [('a red kite', [64, 32, 0, 96])]\nBackground prompt: a beach",
        "no area",
    ),
    (
        "outside-the-canvas",
        "Objects: [('a red kite', [0.8, 0.1, 0.5, 0.2])]\nBackground prompt: a beach",
        "outside",
    ),
    (
        "pixels-without-a-size",
        "Objects: [('a red kite', [700, 32, 300, 96])]\nBackground prompt: a beach",
        "canvas size",
    ),
    (
        "empty-layers-section",
        "Layers (bottom to top):\nnothing fits here\n\nBackground prompt: a beach",
        "has no layers",
    ),
    (
        "grid-and-boxes",
        "Objects: [('a red kite', [64, 32, 128, 96])]\nFinal split ratio: 1,1\n"
        "Regional Prompt: a BREAK b",
        "one layout",
    ),
    ("empty-prompt", "Objects: [('', [64, 32, 128, 96])]\nBackground prompt: a beach", "empty"),
    (
        "our-order-reversed",
        "Layers:\n- [0.5, 0.5, 0.2, 0.9] a boy\nBackground prompt: a beach",
        "x1 must be greater",
    ),
    (
        "too-many-layers",
        "Objects: ["
        + ", ".join(f"('a bird', [{i}, {i}, 4, 4])" for i in range(MAX_LAYERS + 1))
        + "]\nBackground prompt: a sky",
        f"at most {MAX_LAYERS} layers",
    ),
]


@pytest.mark.parametrize(
    ("reply", "needle"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_box_reply_failures(reply: str, needle: str) -> None:
    with pytest.raises(PlannerError) as info:
        parse_reply(reply, prompt=PROMPT)
    assert info.value.raw == reply
    assert needle.lower() in str(info.value).lower()


# --------------------------------------------------------------------------- JSON layers

LAYERED: dict[str, Any] = {
    "recaption": "A red kite flies high above a boy on a windy beach.",
    "entities": [{"name": "kite", "attributes": ["red"]}, {"name": "boy", "attributes": []}],
    "rows": [],
    "layers": [
        {"prompt": BOY_PROMPT, "box": list(BOY)},
        {"prompt": KITE_PROMPT, "box": list(KITE)},
    ],
    "base_prompt": BACKGROUND,
    "base_ratio": 0.2,
}


def test_json_layers_become_a_canvas_plan() -> None:
    result = parse_plan_reply(json.dumps(LAYERED), prompt=PROMPT)
    plan = result.plan
    assert plan.is_canvas
    assert [(x.prompt, x.box) for x in plan.layers] == [(BOY_PROMPT, BOY), (KITE_PROMPT, KITE)]
    assert plan.base_prompt == BACKGROUND and plan.base_ratio == 0.2
    # a reply that leaves out the empty list is read the same
    short = {k: v for k, v in LAYERED.items() if k != "rows"}
    assert parse_plan_reply(json.dumps(short), prompt=PROMPT).plan == plan


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"layers": [{"prompt": "a kite", "box": [10, 20, 100, 200]}]}, "inside the canvas"),
        ({"layers": [{"prompt": "a kite", "box": [0.1, 0.2, 0.3]}]}, "at least 4"),
        ({"rows": [{"height": 1, "regions": [{"prompt": "a", "width": 1}]}]}, "not both"),
        ({"layers": []}, "both are empty"),
    ],
    ids=["pixels", "three-numbers", "rows-and-layers", "neither"],
)
def test_json_layer_failures(change: dict[str, Any], needle: str) -> None:
    reply = json.dumps({**LAYERED, **change})
    with pytest.raises(PlannerError) as info:
        parse_plan_reply(reply, prompt=PROMPT)
    assert needle in str(info.value)


def test_schema_offers_layers_with_four_number_boxes() -> None:
    strict = plan_schema(strict=True)  # OpenAI: both lists, one of them left empty
    assert {"rows", "layers"} <= set(strict["required"])
    for schema in (plan_schema(), plan_schema(bounded=True)):
        # elsewhere a choice: a decoder held to the schema cannot fill both lists
        grid, canvas = schema["anyOf"]
        assert "layers" not in grid["properties"] and "layers" not in grid["required"]
        assert "rows" not in canvas["properties"] and "rows" not in canvas["required"]
        assert grid["properties"]["rows"]["minItems"] == 1
        assert canvas["properties"]["layers"]["minItems"] == 1
        assert "either" in schema["description"]
    for obj in (strict, plan_schema()["anyOf"][1], plan_schema(bounded=True)["anyOf"][1]):
        layer = obj["properties"]["layers"]["items"]
        assert layer["required"] == ["prompt", "box"]
        assert layer["properties"]["box"]["items"] == {"type": "number"}
        assert "x0, y0, x1, y1" in layer["properties"]["box"]["description"]
    box = plan_schema(bounded=True)["anyOf"][1]["properties"]["layers"]["items"]
    assert box["properties"]["box"]["minItems"] == box["properties"]["box"]["maxItems"] == 4
    PlanReply.model_validate(LAYERED)


def test_a_grammar_of_the_schema_takes_a_grid_or_layers_not_both() -> None:
    xgr = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string as accepts

    grammar = xgr.Grammar.from_json_schema(
        json.dumps(plan_schema(bounded=True)), any_whitespace=False
    )
    rows = [{"height": 1, "regions": [{"prompt": "a red kite", "width": 1}]}]
    grid = {**LAYERED, "rows": rows}
    del grid["layers"]
    canvas = {k: v for k, v in LAYERED.items() if k != "rows"}
    both = {**LAYERED, "rows": rows}
    assert accepts(grammar, json.dumps(grid))
    assert accepts(grammar, json.dumps(canvas))
    assert not accepts(grammar, json.dumps(both))


# --------------------------------------------------------------------------- loopback servers


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
    retry = RetryPolicy(retries=1, base_delay=0.01, sleep=Sleeps())
    return OpenAIPlanner(
        model="test-model", base_url=server.base_url, api_key="sk-x", retry=retry, **kw
    )


def ollama_planner(server: OllamaServer, **kw: Any) -> OllamaPlanner:
    retry = RetryPolicy(retries=1, base_delay=0.01, sleep=Sleeps())
    return OllamaPlanner(model="qwen-test:1b", host=server.host, retry=retry, **kw)


def test_openai_structured_layers(openai_server: OpenAIServer) -> None:
    openai_server.push(openai_server.chat(json.dumps(LAYERED)))
    result = openai_planner(openai_server).plan(PROMPT)
    assert result.plan.is_canvas and result.plan.prompts == [BOY_PROMPT, KITE_PROMPT]
    body = openai_server.chat_requests[0].json
    schema = body["response_format"]["json_schema"]["schema"]
    assert "layers" in schema["required"]
    assert '"layers"' in body["messages"][0]["content"]  # the JSON instructions show layers


def test_openai_text_reply_with_objects_then_retry(openai_server: OpenAIServer) -> None:
    # first an object outside the canvas; the error goes back to the model, which fixes it
    bad = OBJECTS_512.replace("[64, 32, 128, 96]", "[464, 32, 128, 96]")
    openai_server.push(
        openai_server.chat(bad, reasoning_content="kite high, boy low"),
        openai_server.chat(OBJECTS_512),
    )
    result = openai_planner(openai_server, structured=False).plan(PROMPT)
    assert [(x.prompt, x.box) for x in result.plan.layers] == [
        (KITE_PROMPT, KITE),
        (BOY_PROMPT, BOY),
    ]
    assert result.plan.base_prompt == BACKGROUND
    first, second = (r.json for r in openai_server.chat_requests)
    assert "response_format" not in first
    assert first["messages"][0]["content"] == template.INSTRUCTIONS
    retry = second["messages"][-1]["content"]
    assert "outside the 512x512 canvas" in retry and "Layers:" in retry


def test_openai_pixel_boxes_on_the_planners_canvas(openai_server: OpenAIServer) -> None:
    reply = (
        "Objects: [('a red kite with a long tail', [128, 64, 256, 192])]\n"
        "Background prompt: a windy beach under a pale blue sky"
    )
    openai_server.push(openai_server.chat(reply))
    planner = openai_planner(openai_server, structured=False)
    planner.canvas_size = (1024, 1024)
    (layer,) = planner.plan(PROMPT).plan.layers
    assert layer.box == KITE


def test_ollama_structured_layers(ollama_server: OllamaServer) -> None:
    ollama_server.push(ollama_server.chat(json.dumps(LAYERED)))
    result = ollama_planner(ollama_server).plan(PROMPT)
    assert result.plan.is_canvas and result.plan.base_prompt == BACKGROUND
    body = ollama_server.chat_requests[0].json
    assert body["format"] == plan_schema()
    assert "layers" in body["format"]["anyOf"][1]["properties"]


def test_ollama_text_reply_with_our_layers_and_thinking(ollama_server: OllamaServer) -> None:
    ollama_server.push(ollama_server.chat(OURS, thinking="the kite is in the sky"))
    result = ollama_planner(ollama_server, structured=False).plan(PROMPT)
    assert [(x.prompt, x.box) for x in result.plan.layers] == [
        (BOY_PROMPT, BOY),
        (KITE_PROMPT, KITE),
    ]
    assert [e.name for e in result.recaption.entities] == ["kite", "boy"]


def test_ollama_garbage_every_time_is_a_planner_error(ollama_server: OllamaServer) -> None:
    garbage = "Objects: [('a red kite', [64, 32, 128])]\nBackground prompt: a beach"
    ollama_server.push(*(ollama_server.chat(garbage) for _ in range(3)))
    with pytest.raises(PlannerError) as info:
        ollama_planner(ollama_server, structured=False).plan(PROMPT)
    assert "has 3 numbers" in str(info.value)
    assert info.value.raw == garbage
    assert len(ollama_server.chat_requests) == 3
