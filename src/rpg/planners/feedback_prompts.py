"""What a multimodal planner is asked: the instructions (in this project's own words, with its
own examples) and the opening messages of a review and of an edit.

Regions are described twice, as the plan's JSON and one line each with their position, so a
model can point at them by index.
"""

from __future__ import annotations

import json
from typing import Any

from rpg.models import RegionPlan
from rpg.planners.chat import ChatMessage

__all__ = [
    "EDIT_INSTRUCTIONS",
    "REVIEW_INSTRUCTIONS",
    "build_edit_messages",
    "build_review_messages",
    "describe_regions",
]


_PLAN_SHAPE = (
    'A plan is a JSON object: "rows" (top to bottom; each with a relative "height" and its '
    '"regions" left to right; each region with its own "prompt", a relative "width", and '
    'optionally "negative_prompt" and "base_weight", null for the defaults), "base_prompt" (a '
    "prompt for the whole picture that is blended into every region, or null) and "
    '"base_ratio" (how strongly the base prompt is blended in, 0 to 1).'
)

_REVIEW_EXAMPLE: dict[str, Any] = {
    "critique": "The mug on the right came out red instead of blue, and the apple is tiny.",
    "done": False,
    "plan": {
        "rows": [
            {
                "height": 1,
                "regions": [
                    {
                        "prompt": "a large shiny red apple, close-up, on a wooden table",
                        "width": 1,
                        "negative_prompt": None,
                        "base_weight": None,
                    },
                    {
                        "prompt": "a cobalt blue ceramic mug on a wooden table, blue glaze",
                        "width": 1,
                        "negative_prompt": None,
                        "base_weight": None,
                    },
                ],
            }
        ],
        "base_prompt": "still life on a wooden table, soft daylight",
        "base_ratio": 0.2,
    },
}
_EDIT_EXAMPLE: dict[str, Any] = {
    "explanation": "The cat is in region 1, the right half; only it changes colour.",
    "plan": None,
    "changes": [{"index": 1, "prompt": "a sleek black cat sitting on a sunny windowsill"}],
}

REVIEW_INSTRUCTIONS = f"""\
You are the art director of a regional text-to-image system. The system cuts the canvas into \
rows, top to bottom, and each row into regions, left to right; every region is painted from its \
own prompt, optionally mixed with a base prompt for the whole scene. You receive the user's \
prompt, the plan that was painted, and the picture that came out.

Judge the picture against the user's prompt, not against the plan:
1. Note what is off: an object missing or doubled, an attribute (colour, clothing, material) \
on the wrong object, an object in the wrong place, a region that ignored its prompt, seams or \
a scene that falls apart.
2. If nothing important is off, answer "done": true and "plan": null.
3. Otherwise answer "done": false and a revised plan that should fix it when the picture is \
painted again with the same seed. Keep what works. Useful moves: make a region prompt more \
specific (state the object's attributes again, drop words that belong to another region), \
resize or move regions to where the objects should be, add a region for a missing object, \
remove one that should not be there, add a base prompt when the scene falls apart, or lower \
its ratio when objects bleed into each other.

{_PLAN_SHAPE}

Answer with one JSON object and nothing else: {{"critique": "...", "done": true or false, \
"plan": a plan or null}}. For example:
{json.dumps(_REVIEW_EXAMPLE)}"""

EDIT_INSTRUCTIONS = f"""\
You plan local edits for a regional text-to-image system. A picture is divided into rows, top \
to bottom, and each row into regions, left to right; each region is painted from its own \
prompt. Regions are numbered from 0 in reading order: all regions of the top row from left to \
right, then the next row, and so on.

You receive a picture, an edit instruction (for example "make the cat black" or "put a hat on \
the man"), and usually the plan the picture was painted from. Decide which regions have to be \
repainted to carry out the instruction and write each one's new prompt:
- repaint as few regions as you can; everything outside them stays exactly as it is;
- a new prompt replaces the old one completely, so keep the words about setting, lighting and \
style that the region had, and change only what the instruction asks for;
- if no plan is given, first describe the picture as a plan in "plan": rows and regions that \
follow what is in it, each prompt saying what its region shows now; then choose regions from \
that plan. If a plan is given, set "plan" to null.

{_PLAN_SHAPE}

Answer with one JSON object and nothing else: {{"explanation": "...", "plan": a plan or null, \
"changes": [{{"index": 0, "prompt": "..."}}]}}. For example, for "make the cat black" with a \
plan whose region 1 is a white cat:
{json.dumps(_EDIT_EXAMPLE)}"""


def describe_regions(plan: RegionPlan) -> str:
    """One line per region (index, position as percentages, prompt), so a model can point."""
    lines = []
    for i, (region, (x0, y0, x1, y1)) in enumerate(zip(plan.regions, plan.boxes(), strict=True)):
        lines.append(
            f"region {i}: x {x0:.0%}–{x1:.0%}, y {y0:.0%}–{y1:.0%} (from the top-left): "
            f"{region.prompt}"
        )
    if plan.base_prompt is not None:
        lines.append(f"base prompt (whole picture, ratio {plan.base_ratio:g}): {plan.base_prompt}")
    return "\n".join(lines)


def _plan_json(plan: RegionPlan) -> str:
    return plan.model_dump_json()


def build_review_messages(prompt: str, plan: RegionPlan) -> list[ChatMessage]:
    """The opening messages of a review (the image goes with the user message)."""
    user = (
        f"User prompt: {prompt.strip()}\n\n"
        f"Plan that was painted:\n{_plan_json(plan)}\n\n"
        f"The same plan, region by region:\n{describe_regions(plan)}\n\n"
        "The attached picture is the result. Review it and answer with the JSON object."
    )
    return [
        {"role": "system", "content": REVIEW_INSTRUCTIONS},
        {"role": "user", "content": user},
    ]


def build_edit_messages(instruction: str, plan: RegionPlan | None) -> list[ChatMessage]:
    """The opening messages of an edit request (the image goes with the user message)."""
    if plan is None:
        about = (
            'No plan is known for this picture: describe it as a plan in "plan" first, then '
            "choose regions from it."
        )
    else:
        about = (
            f"Plan the picture was painted from:\n{_plan_json(plan)}\n\n"
            f"The same plan, region by region:\n{describe_regions(plan)}\n\n"
            'Choose regions from this plan and set "plan" to null.'
        )
    user = (
        f"Edit instruction: {instruction.strip()}\n\n{about}\n\n"
        "The attached picture is the one to edit. Answer with the JSON object."
    )
    return [
        {"role": "system", "content": EDIT_INSTRUCTIONS},
        {"role": "user", "content": user},
    ]
