"""The rules planner on a table of prompts: expected rows and region prompts, phrasing by phrasing.

Each case is ``(prompt, regions, rule)``: ``regions`` are the region prompts exactly as the
planner must write them, rows top to bottom separated by " / ", regions left to right by " | ";
``rule`` is the layout rule that must have made them (what ``rpg plan --explain`` reports).
Every multi-region plan carries the whole prompt as its base prompt; a one-region plan has none.

The canvas table holds the wording that rows and columns cannot say: its cases are
``(prompt, layers, background, rule)`` with the layers bottom to top as ``(prompt, box)``.
"""

from __future__ import annotations

import pytest

from rpg.planners.rules import RulesPlanner
from rpg.planners.rules.canvas import (
    BIG_BOX,
    CENTRE_BOX,
    CORNER_BOXES,
    ON_SURFACE_BOX,
    SMALL_IN_BOX,
    SMALL_ON_BOX,
)

LEFT = [
    ("a bird on the left of a horse", "a bird | a horse", "relation"),
    ("a dog to the left of a cat", "a dog | a cat", "relation"),
    ("a photo of a bench left of a giraffe",
     "a photo of a bench | a photo of a giraffe", "relation"),
    ("bird left of horse", "bird | horse", "relation"),
    ("two dogs on the left of a fire truck", "two dogs | a fire truck", "relation"),
    ("A red car is on the left side of a blue bus", "A red car | a blue bus", "relation"),
    ("a teddy bear sitting on the left of a coffee mug", "a teddy bear | a coffee mug", "relation"),
    ("the cats on the left of the dogs", "the cats | the dogs", "relation"),
    ("The black chair was on the left of the white table",
     "The black chair | the white table", "relation"),
]  # fmt: skip
RIGHT = [
    ("a cat on the right of a chair", "a chair | a cat", "relation"),
    ("a photo of a dog right of a teddy bear",
     "a photo of a teddy bear | a photo of a dog", "relation"),
    ("a lamp to the right of a sofa", "a sofa | a lamp", "relation"),
    ("three apples on the right of a wine glass", "a wine glass | three apples", "relation"),
    ("an elephant right of a traffic light", "a traffic light | an elephant", "relation"),
    ("a girl to the right hand side of a boy", "a boy | a girl", "relation"),
]  # fmt: skip
ABOVE = [
    ("a balloon on the top of a giraffe", "a balloon / a giraffe", "relation"),
    ("a cup on top of a book", "a cup / a book", "relation"),
    ("a photo of a wine glass above a hair drier",
     "a photo of a wine glass / a photo of a hair drier", "relation"),
    ("a bird over a boat", "a bird / a boat", "relation"),
    ("a kite flying above two trees", "a kite flying / two trees", "relation"),
    ("clouds above mountains", "clouds / mountains", "relation"),
    ("a cat atop a fridge", "a cat / a fridge", "relation"),
]  # fmt: skip
BELOW = [
    ("a cat under a table", "a table / a cat", "relation"),
    ("a dog below a traffic light", "a traffic light / a dog", "relation"),
    ("a fish beneath a boat", "a boat / a fish", "relation"),
    ("a suitcase on the bottom of a shelf", "a shelf / a suitcase", "relation"),
    ("a mouse underneath a chair", "a chair / a mouse", "relation"),
    ("a photo of a cup below a cell phone",
     "a photo of a cell phone / a photo of a cup", "relation"),
    ("a cat and a dog under a table", "a table / a cat | a dog", "relation"),
]  # fmt: skip
BESIDE = [
    ("a sheep near a bicycle", "a sheep | a bicycle", "relation"),
    ("a man next to a woman", "a man | a woman", "relation"),
    ("a vase beside a clock", "a vase | a clock", "relation"),
    ("a house by a lake", "a house | a lake", "relation"),
    ("a car on side of a dog", "a car | a dog", "relation"),
    ("a horse alongside a train", "a horse | a train", "relation"),
    ("a chair close to a potted plant", "a chair | a potted plant", "relation"),
    ("a brown bear next to a white rabbit in a snowy forest",
     "a brown bear in a snowy forest | a white rabbit in a snowy forest", "relation"),
]  # fmt: skip
DEPTH = [
    ("a dog in front of a car", "a dog | a car", "relation"),
    ("a tree behind a house", "a tree | a house", "relation"),
    ("a girl in front of a cake, cinematic", "a girl, cinematic | a cake, cinematic", "relation"),
    ("a horse and a donkey standing in front of a barn",
     "a horse, standing in front of a barn | a donkey, standing in front of a barn", "and"),
]  # fmt: skip
BETWEEN = [
    ("a cat between a dog and a bird", "a dog | a cat | a bird", "between"),
    ("a red vase between two candles and a clock", "two candles | a red vase | a clock", "between"),
    ("a tree is between a house and a car on a hill",
     "a house on a hill | a tree on a hill | a car on a hill", "between"),
]  # fmt: skip
SEQUENCE = [
    ("a lamp, a cat and a dog from left to right", "a lamp | a cat | a dog", "sequence"),
    ("from top to bottom, a sun, a mountain and a lake", "a sun / a mountain / a lake", "sequence"),
    ("from right to left: a cat, a dog", "a dog | a cat", "sequence"),
    ("From left to right, a red apple, a blue mug and a yellow banana on a wooden table",
     "a red apple on a wooden table | a blue mug on a wooden table"
     " | a yellow banana on a wooden table",
     "sequence"),
    ("a cup above a book above a table", "a cup / a book / a table", "relation"),
    ("a cat on the left of a dog on the left of a bird", "a cat | a dog | a bird", "relation"),
    ("a cat on the left of a dog and a bird on the right of the dog",
     "a cat | a dog | a bird", "relation"),
    ("from left to right, a cat, a dog and horse", "a cat | a dog | horse", "sequence"),
    # "square" can be an adjective too; after a comma, an article still opens the next one
    ("from left to right, a red square, a purple star and an orange square",
     "a red square | a purple star | an orange square", "sequence"),
    ("from left to right, a purple square, a green triangle, a blue triangle and a red star",
     "a purple square | a green triangle | a blue triangle | a red star", "sequence"),
    ("a cat that is on the left of a dog which is under a table",
     "a table / a cat | a dog", "relation"),
]  # fmt: skip
COLOUR = [
    ("a red book and a yellow vase", "a red book | a yellow vase", "and"),
    ("a photo of a blue bench and a green bowl",
     "a photo of a blue bench | a photo of a green bowl", "and"),
    ("a purple lamp and an orange towel", "a purple lamp | an orange towel", "and"),
    ("two red apples and three green pears", "two red apples | three green pears", "and"),
    ("red apples and green pears", "red apples | green pears", "and"),
    ("a black fire truck and a pink teddy bear", "a black fire truck | a pink teddy bear", "and"),
    ("a wooden chair and a metallic lamp", "a wooden chair | a metallic lamp", "and"),
    ("a round clock and a square mirror", "a round clock | a square mirror", "and"),
    ("a bathroom with green tile and a red shower curtain",
     "green tile in a bathroom | a red shower curtain in a bathroom", "scene with"),
    ("a kitchen with a white fridge and a black oven",
     "a white fridge in a kitchen | a black oven in a kitchen", "scene with"),
    ("A red cat and a blue dog", "A red cat | a blue dog", "and"),
    ("a white coffee mug, a green wine glass and a brown teddy bear",
     "a white coffee mug | a green wine glass | a brown teddy bear", "and"),
    ("a black and white cat and a brown dog", "a black and white cat | a brown dog", "and"),
    ("a red cat and a blue hair drier", "a red cat | a blue hair drier", "and"),
    ("a red apple on a blue plate", "a red apple / a blue plate", "relation"),
    ("a yellow duck in a blue pond", "a yellow duck / a blue pond", "relation"),
    ("a white cat in a red hat", "a white cat in a red hat", "single"),
    ("the kitchen has brown cabinets and a silver refrigerator",
     "brown cabinets in the kitchen | a silver refrigerator in the kitchen", "scene with"),
]  # fmt: skip
SHARED = [
    ("A brown horse on the left and a grey donkey on the right, grazing in a meadow",
     "A brown horse, grazing in a meadow | a grey donkey, grazing in a meadow", "positions"),
    ("Two boys playing chess in a park, the boy on the left wears a green cap and the boy on "
     "the right wears glasses",
     "a boy wearing a green cap, playing chess in a park"
     " | a boy wearing glasses, playing chess in a park",
     "described positions"),
    ("a corgi next to a tabby cat on a sofa, oil painting",
     "a corgi on a sofa, oil painting | a tabby cat on a sofa, oil painting", "relation"),
    ("a red fox and a white owl in a library",
     "a red fox in a library | a white owl in a library", "and"),
    ("In a kitchen, a cat under a table", "a table in a kitchen / a cat in a kitchen", "relation"),
    ("a photo of a blue car and a red bike, cinematic",
     "a photo of a blue car, cinematic | a photo of a red bike, cinematic", "and"),
    ("a girl in a red dress on the left and a man in a grey suit on the right, in a park",
     "a girl in a red dress in a park | a man in a grey suit in a park", "positions"),
    ("on the left a cat, on the right a dog, both sleeping on a sofa",
     "a cat, sleeping on a sofa | a dog, sleeping on a sofa", "positions"),
    ("a picture of a horse near a barn at sunset",
     "a picture of a horse at sunset | a picture of a barn at sunset", "relation"),
    ("the man on the left of the picture holds a cup while the woman on the right drinks tea",
     "a man holding a cup | a woman drinking tea", "described positions"),
    ("a red cup and a blue plate lie on a table",
     "a red cup, lying on a table | a blue plate, lying on a table", "and"),
    ("A cat sitting next to a white bicycle on a green lawn",
     "A cat on a green lawn | a white bicycle on a green lawn", "relation"),
]  # fmt: skip
POSITIONS = [
    ("on the right a fox, in the center an owl, on the left a deer",
     "a deer | an owl | a fox", "positions"),
    ("At the top a starry night sky, at the bottom a frozen lake",
     "a starry night sky / a frozen lake", "positions"),
    ("bottom right a fish, top left a cat, bottom left a bird, top right a dog",
     "a cat | a dog / a bird | a fish", "positions"),
    ("on the left, a tall man; on the right, a short woman; between them a small dog",
     "a tall man | a small dog | a short woman", "positions"),
]  # fmt: skip
POSITIONS_FIRST = [
    ("on the left a red car, on the right a blue bus", "a red car | a blue bus", "positions"),
    ("At the top a blue sky, at the bottom a green field",
     "a blue sky / a green field", "positions"),
    ("on the left is a red car and on the right is a blue bus",
     "a red car | a blue bus", "positions"),
    ("to the left a red car, to the right a blue bus", "a red car | a blue bus", "positions"),
    ("left: a red car, right: a blue bus", "a red car | a blue bus", "positions"),
    ("top: a starry sky; bottom: a frozen lake", "a starry sky / a frozen lake", "positions"),
    ("On the left, a red car. On the right, a blue bus.", "a red car | a blue bus", "positions"),
    ("at the top a blue sky, at the bottom a cat and a dog",
     "a blue sky / a cat | a dog", "positions"),
]  # fmt: skip
THREE_POSITIONS = [
    ("a cat on the left, a dog in the middle and a bird on the right",
     "a cat | a dog | a bird", "positions"),
    ("a red car on the left, a blue bus in the middle and a green truck on the right in a city",
     "a red car in a city | a blue bus in a city | a green truck in a city", "positions"),
    ("on the left a cat, in the middle a dog and on the right a bird",
     "a cat | a dog | a bird", "positions"),
    ("a pink teddy bear on the left, blue lamp in the center and a yellow umbrella on the right",
     "a pink teddy bear | blue lamp | a yellow umbrella", "positions"),
    ("a sun at the top, a mountain in the middle and a lake at the bottom",
     "a sun / a mountain / a lake", "positions"),
    ("left: a fox, middle: an owl, right: a deer", "a fox | an owl | a deer", "positions"),
]  # fmt: skip
SINGLE = [
    ("a woman in a yellow raincoat holding a blue umbrella",
     "a woman in a yellow raincoat holding a blue umbrella", "single"),
    ("a girl with a red hat and a blue scarf", "a girl with a red hat and a blue scarf", "single"),
    ("A watercolor of a lighthouse at dusk", "A watercolor of a lighthouse at dusk", "single"),
    ("a photo of four cats", "a photo of four cats", "single"),
    ("cats and dogs", "cats and dogs", "single"),
    ("a man with a hat over his eyes", "a man with a hat over his eyes", "single"),
    ("a cat on the left", "a cat on the left", "single"),
    ("a portrait painted by a master", "a portrait painted by a master", "single"),
    ("a boy on the left and a girl who is on the right of the boy wears a hat",
     "a boy on the left and a girl who is on the right of the boy wears a hat", "single"),
    ("Two boys playing chess in a park, the boy on the left wears",
     "Two boys playing chess in a park, the boy on the left wears", "single"),
    ("a white kitchen counter with a big, brown bowl on it",
     "a white kitchen counter with a big, brown bowl on it", "single"),
    # two entities in one cell, or a lead that is no context: one region, never a mixed one
    ("on the left a cat and a dog, on the right a horse",
     "on the left a cat and a dog, on the right a horse", "single"),
    ("a cat and a dog, on the right a horse", "a cat and a dog, on the right a horse", "single"),
    ("a cat and a dog between a horse", "a cat and a dog between a horse", "single"),
]  # fmt: skip

FAMILIES = {
    "left of": LEFT,
    "right of": RIGHT,
    "above / on top of": ABOVE,
    "below / under": BELOW,
    "next to / near": BESIDE,
    "in front of / behind": DEPTH,
    "between": BETWEEN,
    "sequences and chains": SEQUENCE,
    "colour binding": COLOUR,
    "shared clauses": SHARED,
    "absolute positions": POSITIONS,
    "positions given first": POSITIONS_FIRST,
    "three positions": THREE_POSITIONS,
    "one region": SINGLE,
}
CASES = [
    pytest.param(prompt, [row.split(" | ") for row in regions.split(" / ")], rule, id=prompt)
    for cases in FAMILIES.values()
    for prompt, regions, rule in cases
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize(("prompt", "rows", "rule"), CASES)
def test_table(prompt: str, rows: list[list[str]], rule: str) -> None:
    result = RulesPlanner().plan(prompt)
    got = [[region.prompt for region in row.regions] for row in result.plan.rows]
    assert got == rows
    assert result.raw.splitlines()[0] == f"rule: {rule}"
    if len(result.plan.regions) > 1:
        assert result.plan.base_prompt == prompt
    else:
        assert result.plan.base_prompt is None
    assert len(result.recaption.entities) == len(result.plan.regions)


TOP_LEFT, TOP_RIGHT = CORNER_BOXES[("top", "left")], CORNER_BOXES[("top", "right")]
BOTTOM_LEFT, BOTTOM_RIGHT = CORNER_BOXES[("bottom", "left")], CORNER_BOXES[("bottom", "right")]
CANVAS = [
    # corners and the centre: a layer over the scene, which is the background
    ("a bird in the top left corner of a blue sky", [("a bird", TOP_LEFT)], "a blue sky",
     "corner"),
    ("a red kite flying in the upper right corner of a cloudy sky",
     [("a red kite flying", TOP_RIGHT)], "a cloudy sky", "corner"),
    ("a blue sky with a bird in the top right corner", [("a bird", TOP_RIGHT)], "a blue sky",
     "corner"),
    ("a green meadow, a white horse in the bottom left corner",
     [("a white horse", BOTTOM_LEFT)], "a green meadow", "corner"),
    ("a lighthouse in the bottom right corner, a stormy sea",
     [("a lighthouse", BOTTOM_RIGHT)], "a stormy sea", "corner"),
    ("a photo of a sun in the centre of a desert landscape, 4k",
     [("a photo of a sun, 4k", CENTRE_BOX)], "a photo of a desert landscape, 4k", "centre"),
    ("a tree in the middle of a field at dusk", [("a tree at dusk", CENTRE_BOX)],
     "a field at dusk", "centre"),
    ("a cat in the top left corner and a dog in the bottom right corner",
     [("a cat", TOP_LEFT), ("a dog", BOTTOM_RIGHT)],
     "a cat in the top left corner and a dog in the bottom right corner", "corners"),
    ("In a garden: top right a sun, bottom left a gnome",
     [("a sun in a garden", TOP_RIGHT), ("a gnome in a garden", BOTTOM_LEFT)],
     "In a garden: top right a sun, bottom left a gnome", "corners"),
    # "a small X in/on a big Y": two layers, the big one first
    ("a small cat on a big sofa", [("a big sofa", BIG_BOX), ("a small cat", SMALL_ON_BOX)],
     "a small cat on a big sofa", "size"),
    ("a tiny mouse in a huge shoe", [("a huge shoe", BIG_BOX), ("a tiny mouse", SMALL_IN_BOX)],
     "a tiny mouse in a huge shoe", "size"),
    ("a small red boat on a big blue lake at sunset",
     [("a big blue lake at sunset", BIG_BOX), ("a small red boat at sunset", SMALL_ON_BOX)],
     "a small red boat on a big blue lake at sunset", "size"),
    # "X on Y" where Y is a surface: X over the surface, which is the background
    ("a cat sitting on a sofa", [("a cat", ON_SURFACE_BOX)], "a sofa", "surface"),
    ("a red apple on a wooden table", [("a red apple", ON_SURFACE_BOX)], "a wooden table",
     "surface"),
    ("a dog lying on the grass", [("a dog", ON_SURFACE_BOX)], "the grass", "surface"),
    ("a red cat on a blue sofa", [("a red cat", ON_SURFACE_BOX)], "a blue sofa", "surface"),
    ("A man in a red shirt and black pants resting on a bench",
     [("A man in a red shirt and black pants resting", ON_SURFACE_BOX)], "a bench", "surface"),
    ("a photo of a cat on a sofa in a living room, oil painting",
     [("a photo of a cat in a living room, oil painting", ON_SURFACE_BOX)],
     "a photo of a sofa in a living room, oil painting", "surface"),
]  # fmt: skip
#: Wording that stays a grid (or one region) although it looks like the canvas rules'.
NOT_CANVAS = [
    ("a red apple on a blue plate", "a red apple / a blue plate", "relation"),  # no surface
    ("a bird in the top left corner of the image",
     "a bird in the top left corner of the image", "single"),  # the canvas is no scene
    ("a cat and a dog on a sofa", "a cat on a sofa | a dog on a sofa", "and"),
    ("a cup on top of a table", "a cup / a table", "relation"),
    ("a corgi next to a tabby cat on a sofa",
     "a corgi on a sofa | a tabby cat on a sofa", "relation"),
    ("bottom right a fish, top left a cat, bottom left a bird, top right a dog",
     "a cat | a dog / a bird | a fish", "positions"),  # all four corners tile the canvas
    ("a small cat next to a big dog", "a small cat | a big dog", "relation"),
    # the words after the thing place another entity: no scene, no surface
    ("a cat in the middle, a dog under a horse", "a horse / a cat in the middle | a dog",
     "relation"),
    ("a cat on a sofa next to a dog", "a cat on a sofa | a dog", "relation"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("prompt", "layers", "background", "rule"), CANVAS, ids=[c[0] for c in CANVAS]
)
def test_canvas_table(
    prompt: str, layers: list[tuple[str, tuple[float, ...]]], background: str, rule: str
) -> None:
    result = RulesPlanner().plan(prompt)
    plan = result.plan
    assert plan.is_canvas and not plan.rows
    assert [(layer.prompt, layer.box) for layer in plan.layers] == layers
    assert plan.base_prompt == background
    assert result.raw.splitlines()[0] == f"rule: {rule}"
    assert len(result.recaption.entities) == len(plan.layers)
    # without a base prompt the whole prompt paints the background (DESIGN.md)
    assert RulesPlanner(use_base=False).plan(prompt).plan.base_prompt is None


@pytest.mark.parametrize(("prompt", "regions", "rule"), NOT_CANVAS, ids=[c[0] for c in NOT_CANVAS])
def test_grids_stay_grids(prompt: str, regions: str, rule: str) -> None:
    result = RulesPlanner().plan(prompt)
    assert not result.plan.is_canvas
    got = " / ".join(" | ".join(r.prompt for r in row.regions) for row in result.plan.rows)
    assert got == regions
    assert result.raw.splitlines()[0] == f"rule: {rule}"


#: Canvas cases that the grid rules alone read as several regions (the rest are one region).
_GRID_READS = {
    "a cat in the top left corner and a dog in the bottom right corner",
    "In a garden: top right a sun, bottom left a gnome",
    "a green meadow, a white horse in the bottom left corner",
    "a lighthouse in the bottom right corner, a stormy sea",
    "a small red boat on a big blue lake at sunset",
    "a red cat on a blue sofa",
}


@pytest.mark.parametrize("prompt", [c[0] for c in CANVAS])
def test_canvas_false_keeps_to_grids(prompt: str) -> None:
    """``canvas=False`` plans with the grid rules only, as before there were canvas plans."""
    plan = RulesPlanner(canvas=False).plan(prompt).plan
    assert not plan.is_canvas
    if prompt in _GRID_READS:
        assert len(plan.prompts) >= 2
    else:
        assert plan.prompts == [prompt]
