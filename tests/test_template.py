"""The planning instruction and the tolerant parser of free-form planner replies."""

from __future__ import annotations

import re

import pytest

from rpg.errors import PlannerError
from rpg.planners.template import (
    EXAMPLES,
    INSTRUCTIONS,
    TEMPLATE_VERSION,
    build_retry_message,
    build_user_message,
    parse_reply,
)

PROMPT = "a girl with a silver braid and a man with blonde hair"
GIRL = "a girl with a silver braid, in a park"
MAN = "a man with blonde hair, in a park"
BASE = "a couple standing in a park"
DOG = "a small dog, in a park"
BIKE = "a red bicycle, in a park"

# (id, reply, expected split ratio, expected base prompt, expected regional prompts)
REPLIES = [
    (
        "plain",
        f"Final split ratio: 1,1\nBase prompt used: no\nRegional Prompt: {GIRL} BREAK {MAN}",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "think-block",
        "<think>The user wants two people. Final split ratio: 1,1,1 maybe?\n"
        "Regional Prompt: x BREAK y BREAK z</think>\n"
        f"Final split ratio: 1,1\nRegional Prompt: {GIRL} BREAK {MAN}",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "unclosed-leading-think",
        "<think>two entities side by side, left and right\n\n"
        f"Final split ratio: 2,1\nBase prompt used: no\nRegional Prompt: {GIRL} BREAK {MAN}",
        "2,1",
        None,
        [GIRL, MAN],
    ),
    (
        "orphan-closing-think",
        "so the girl goes left.\nFinal split ratio: 9\n</think>\n\n"
        f"Final split ratio: 1,1\nRegional Prompt: {GIRL} BREAK {MAN}",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "markdown-emphasis",
        f"**Final split ratio:** 1,1\n**Base prompt used:** yes\n"
        f"**Regional Prompt:** {BASE} BREAK {GIRL} BREAK {MAN}",
        "1,1",
        BASE,
        [GIRL, MAN],
    ),
    (
        "markdown-headings",
        f"### Final split ratio\n`1,1`\n\n### Regional Prompt\n\n{BASE} BREAK {GIRL} BREAK {MAN}\n",
        "1,1",
        BASE,
        [GIRL, MAN],
    ),
    (
        "code-fence",
        f"Here is the plan:\n```text\nFinal split ratio: 1;1\nRegional Prompt: {GIRL} BREAK "
        f"{MAN}\n```\n",
        "1;1",
        None,
        [GIRL, MAN],
    ),
    (
        "label-variants",
        f"final split-ratio = 1,1\nbase_prompt_used: No\nREGIONAL PROMPTS : {GIRL} BREAK {MAN}",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "multiline-break-at-line-end",
        f"Final split ratio: 1,1\nBase prompt used: yes\nRegional Prompt:\n{BASE} BREAK\n"
        f"{GIRL} BREAK\n{MAN}",
        "1,1",
        BASE,
        [GIRL, MAN],
    ),
    (
        "break-at-line-start-and-bullets",
        f"Final split ratio: 1,1\nRegional Prompt:\n- {GIRL}\n- BREAK {MAN}",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "prose-after-prompts",
        f"Final split ratio: 1,1\nRegional Prompt: {GIRL} BREAK {MAN}\n\n"
        "This layout keeps each person in their own half. Let me know if you want changes!",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "prose-on-next-line",
        f"Final split ratio: 1,1\nRegional Prompt: {GIRL} BREAK {MAN}\nI hope this helps.",
        "1,1",
        None,
        [GIRL, MAN],
    ),
    (
        "trailing-punctuation-on-ratio",
        f"Final split ratio: 1,1,1;1,2,1.\nRegional Prompt: {GIRL} BREAK {MAN} BREAK {DOG} BREAK "
        f"{BIKE}.",
        "1,1,1;1,2,1",
        None,
        [GIRL, MAN, DOG, BIKE],
    ),
    (
        "base-inferred-from-count",
        f"Final split ratio: 0.3;0.7\nRegional Prompt: {BASE} BREAK {GIRL} BREAK {MAN}",
        "0.3;0.7",
        BASE,
        [GIRL, MAN],
    ),
    (
        "prompts-before-ratio",
        f"Regional Prompt: {GIRL} BREAK {MAN}\nFinal split ratio: 1,1 - two equal halves",
        "1,1",
        None,
        [GIRL, MAN],
    ),
]


@pytest.mark.parametrize(
    ("reply", "ratio", "base", "prompts"),
    [r[1:] for r in REPLIES],
    ids=[r[0] for r in REPLIES],
)
def test_parse_reply_variants(reply: str, ratio: str, base: str | None, prompts: list[str]) -> None:
    result = parse_reply(reply, prompt=PROMPT, planner="test")
    assert result.plan.to_split_ratio() == ratio
    assert result.plan.base_prompt == base
    assert result.plan.prompts == prompts
    assert result.raw == reply
    assert result.planner == "test"
    assert result.recaption.original_prompt == PROMPT


def test_recaption_and_entities_are_extracted() -> None:
    reply = (
        "Recaption: A young couple in a sunny park: a girl with a long silver braid and a\n"
        "man with short blonde hair.\n\n"
        "**Key entities:**\n"
        "1. girl: long silver braid, green dress\n"
        "2. man (short blonde hair; denim jacket)\n\n"
        f"Final split ratio: 1,1\nRegional Prompt: {GIRL} BREAK {MAN}"
    )
    rec = parse_reply(reply, prompt=PROMPT).recaption
    assert rec.recaption.startswith("A young couple in a sunny park")
    assert rec.recaption.endswith("short blonde hair")
    assert [e.name for e in rec.entities] == ["girl", "man"]
    assert rec.entities[0].attributes == ("long silver braid", "green dress")
    assert rec.entities[1].attributes == ("short blonde hair", "denim jacket")


def test_recaption_defaults_to_prompt() -> None:
    rec = parse_reply(
        f"Final split ratio: 1,1\nRegional Prompt: {GIRL} BREAK {MAN}", prompt=PROMPT
    ).recaption
    assert rec.recaption == PROMPT
    assert rec.entities == ()


FAILURES = [
    ("empty", "", "empty"),
    ("blank", "  \n\t", "empty"),
    ("no-ratio", f"Regional Prompt: {GIRL} BREAK {MAN}", "Final split ratio"),
    ("no-prompts", "Final split ratio: 1,1\nLooks good.", "Regional Prompt"),
    ("ratio-not-numbers", f"Final split ratio: two halves\nRegional Prompt: {GIRL}", "no ratio"),
    ("negative-ratio", f"Final split ratio: 1,-1\nRegional Prompt: {GIRL} BREAK {MAN}", "positive"),
    (
        "count-mismatch",
        "Final split ratio: 1,1\nBase prompt used: no\nRegional Prompt: a BREAK b BREAK c",
        "2 regions but 3 prompts",
    ),
    (
        "count-mismatch-inferred",
        "Final split ratio: 1,1\nRegional Prompt: a BREAK b BREAK c BREAK d",
        "2 regions but 4 prompts",
    ),
    (
        "base-declared-but-missing",
        f"Final split ratio: 1,1\nBase prompt used: yes\nRegional Prompt: {GIRL} BREAK {MAN}",
        "2 regions but 2 prompts were given; expected 3",
    ),
    ("empty-prompt", "Final split ratio: 1,1\nRegional Prompt: a girl BREAK  BREAK", "empty"),
    ("empty-base", "Final split ratio: 1\nBase prompt used: yes\nRegional Prompt: BREAK a", "base"),
    ("label-without-prompts", "Final split ratio: 1,1\nRegional Prompt:\n", "no prompts"),
    (
        "only-reasoning",
        "<think>I should use Final split ratio 1,1 and two prompts",
        "Final split ratio",
    ),
]


@pytest.mark.parametrize(
    ("reply", "needle"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_parse_reply_failures(reply: str, needle: str) -> None:
    with pytest.raises(PlannerError) as info:
        parse_reply(reply, prompt=PROMPT)
    assert info.value.raw == reply
    assert needle.lower() in str(info.value).lower()


def test_instruction_examples_parse_and_are_consistent() -> None:
    # The examples are cut out of the instruction text itself, not taken from EXAMPLES.
    chunks = re.split(r"^### Example \d+\nCaption: (.*)\n\n", INSTRUCTIONS, flags=re.MULTILINE)
    pairs = list(zip(chunks[1::2], chunks[2::2], strict=True))
    assert 3 <= len(pairs) <= 5
    assert [c for c, _ in pairs] == [e.caption for e in EXAMPLES]
    layouts = set()
    for caption, reply in pairs:
        result = parse_reply(reply.strip(), prompt=caption)
        plan = result.plan
        layouts.add((len(plan.rows), len(plan.regions), plan.base_prompt is not None))
        # the recaption line was found, and every listed entity appears in some regional prompt
        assert result.recaption.recaption != caption
        assert result.recaption.entities
        for entity in result.recaption.entities:
            head = entity.name.split()[-1].lower()
            assert any(head in p.lower() for p in plan.prompts), (caption, entity.name)
        # one entity per region: as many entities as regions
        assert len(result.recaption.entities) == len(plan.regions)
    # the examples teach different things: rows, columns, grids, layers, with and without a base
    assert len(layouts) == len(pairs)
    assert any(base for *_, base in layouts) and not all(base for *_, base in layouts)
    assert any(rows == 0 for rows, *_ in layouts), "no example answers with layers"


def test_instructions_state_the_contract() -> None:
    for label in (
        "Final split ratio:",
        "Regional Prompt:",
        "Base prompt used:",
        "BREAK",
        "Layers (bottom to top",
        "Background prompt:",
    ):
        assert label in INSTRUCTIONS
    assert TEMPLATE_VERSION


def test_user_and_retry_messages() -> None:
    user = build_user_message("  two cats on a sofa \n")
    assert "two cats on a sofa" in user
    assert "Final split ratio" in user
    with pytest.raises(PlannerError) as info:
        parse_reply(
            "Final split ratio: 1,1\nRegional Prompt: a BREAK b BREAK c BREAK d", prompt="x"
        )
    retry = build_retry_message(str(info.value))
    assert str(info.value) in retry
    assert "BREAK" in retry
