"""How often the offline ``rules`` planner lays out compositional prompts correctly, per family.

The prompts below are written in the style of the public compositional benchmarks (T2I-CompBench
spatial and colour prompts, GenEval's "a photo of …" position and colour-attribute prompts),
each with the layout it should get. A plan is correct when

- its rows and regions have the expected shape (rows top to bottom, regions left to right;
  for "next to"/"near"/depth prompts either left-right order counts),
- every region prompt holds all the words of its own entity (e.g. "red" and "book"), and
- no region prompt holds a word that belongs only to another entity (its noun or attributes).

Run: ``python bench/rules_accuracy.py`` (add ``--failures`` to print the prompts it gets wrong).
It needs no model and runs in a second.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

from rpg.planners.rules import RulesPlanner

# Expected layouts: rows separated by " / " (top to bottom), regions by " | " (left to right);
# each region is the words its prompt must contain.
PROMPTS: dict[str, list[tuple[str, str]]] = {
    "left of": [
        ("a bird on the left of a horse", "bird | horse"),
        ("a cat on the left of a dog", "cat | dog"),
        ("a woman on the left of a man", "woman | man"),
        ("a chair on the left of a table", "chair | table"),
        ("a giraffe on the left of a car", "giraffe | car"),
        ("a bicycle on the left of a bus", "bicycle | bus"),
        ("a lamp on the left of a sofa", "lamp | sofa"),
        ("a rabbit on the left of a turtle", "rabbit | turtle"),
        ("a photo of a bench left of a giraffe", "bench | giraffe"),
        ("a photo of a fire hydrant left of a stop sign", "fire hydrant | stop sign"),
        ("a photo of a teddy bear left of a clock", "teddy bear | clock"),
        ("a photo of a laptop left of a cell phone", "laptop | cell phone"),
        ("a dog to the left of a bowl", "dog | bowl"),
        ("a vase to the left of a book", "vase | book"),
        ("two dogs on the left of a cat", "dogs | cat"),
        ("a girl on the left of a fire truck", "girl | fire truck"),
        ("the black chair was on the left of the white table", "black chair | white table"),
    ],
    "right of": [
        ("a cow on the right of a pig", "pig | cow"),
        ("a mouse on the right of a keyboard", "keyboard | mouse"),
        ("a boy on the right of a girl", "girl | boy"),
        ("a candle on the right of a plate", "plate | candle"),
        ("a sheep on the right of a tree", "tree | sheep"),
        ("a photo of a dog right of a teddy bear", "teddy bear | dog"),
        ("a photo of a car right of a traffic light", "traffic light | car"),
        ("a photo of a umbrella right of a suitcase", "suitcase | umbrella"),
        ("a photo of a potted plant right of a couch", "couch | potted plant"),
        ("a phone to the right of a coffee mug", "coffee mug | phone"),
        ("three apples to the right of a banana", "banana | apples"),
        ("a horse on the right of a wine glass", "wine glass | horse"),
    ],
    "on top of / above": [
        ("a balloon on the top of a giraffe", "balloon / giraffe"),
        ("a bird on the top of a car", "bird / car"),
        ("a cat on the top of a refrigerator", "cat / refrigerator"),
        ("a hat on the top of a chair", "hat / chair"),
        ("a cup on top of a book", "cup / book"),
        ("a lamp on top of a desk", "lamp / desk"),
        ("a photo of a wine glass above a hair drier", "wine glass / hair drier"),
        ("a photo of a kite above a bus", "kite / bus"),
        ("a photo of a clock above a tv", "clock / tv"),
        ("a photo of a bird above a sink", "bird / sink"),
        ("a plane above a house", "plane / house"),
        ("a moon over a castle", "moon / castle"),
    ],
    "below / under": [
        ("a cat under a table", "table / cat"),
        ("a dog under an umbrella", "umbrella / dog"),
        ("a ball under a chair", "chair / ball"),
        ("a frog on the bottom of a leaf", "leaf / frog"),
        ("a box on the bottom of a shelf", "shelf / box"),
        ("a photo of a traffic light below a cup", "cup / traffic light"),
        ("a photo of a suitcase below a bowl", "bowl / suitcase"),
        ("a photo of a skateboard below a teddy bear", "teddy bear / skateboard"),
        ("a fish beneath a boat", "boat / fish"),
        ("a mouse underneath a bed", "bed / mouse"),
        ("two shoes under a bench", "bench / shoes"),
        ("a backpack below a clock", "clock / backpack"),
    ],
    "next to / near": [
        ("a sheep near a bicycle", "sheep | bicycle"),
        ("a man near a horse", "man | horse"),
        ("a car near a tree", "car | tree"),
        ("a cup next to a laptop", "cup | laptop"),
        ("a man next to a woman", "man | woman"),
        ("a dog next to a fire hydrant", "dog | fire hydrant"),
        ("a car on side of a dog", "car | dog"),
        ("a bowl on side of a vase", "bowl | vase"),
        ("a lamp beside a bed", "lamp | bed"),
        ("a cat beside a teddy bear", "cat | teddy bear"),
        ("a house by a river", "house | river"),
        ("a bench alongside a lake", "bench | lake"),
    ],
    "in front of / behind": [
        ("a dog in front of a car", "dog | car"),
        ("a girl in front of a house", "girl | house"),
        ("a chair in front of a window", "chair | window"),
        ("a tree behind a house", "tree | house"),
        ("a cat behind a sofa", "cat | sofa"),
        ("a man behind a bicycle", "man | bicycle"),
    ],
    "between and chains": [
        ("a cat between a dog and a bird", "dog | cat | bird"),
        ("a vase between two candles and a clock", "candles | vase | clock"),
        ("a lamp, a cat and a dog from left to right", "lamp | cat | dog"),
        ("from left to right, an apple, a pear and a banana", "apple | pear | banana"),
        ("from top to bottom, a sun, a mountain and a lake", "sun / mountain / lake"),
        ("a cup above a book above a table", "cup / book / table"),
    ],
    "colour binding": [
        ("a red book and a yellow vase", "red book | yellow vase"),
        ("a green bench and a blue bowl", "green bench | blue bowl"),
        ("a purple lamp and an orange towel", "purple lamp | orange towel"),
        ("a blue backpack and a red book", "blue backpack | red book"),
        ("a black cat and a white dog", "black cat | white dog"),
        ("a brown bear and a white rabbit", "brown bear | white rabbit"),
        ("a pink flower and a yellow butterfly", "pink flower | yellow butterfly"),
        ("a gray elephant and a brown horse", "gray elephant | brown horse"),
        ("a blue car and a red bicycle", "blue car | red bicycle"),
        ("a green apple and a yellow banana", "green apple | yellow banana"),
        ("a white sheep and a black goat", "white sheep | black goat"),
        ("a silver spoon and a golden fork", "silver spoon | golden fork"),
        ("a photo of a blue bench and a green bowl", "blue bench | green bowl"),
        ("a photo of a red umbrella and a yellow suitcase", "red umbrella | yellow suitcase"),
        ("a photo of a pink teddy bear and a black fire hydrant",
         "pink teddy bear | black fire hydrant"),
        ("a photo of a white wine glass and a purple cell phone",
         "white wine glass | purple cell phone"),
        ("a photo of an orange hair drier and a blue traffic light",
         "orange hair drier | blue traffic light"),
        ("a photo of a brown giraffe and a white stop sign", "brown giraffe | white stop sign"),
        ("a bathroom with green tile and a red shower curtain", "green tile | red shower curtain"),
        ("a kitchen with a white fridge and a red kettle", "white fridge | red kettle"),
        ("two red apples and a green pear", "red apples | green pear"),
        ("a blue coffee mug and a yellow teddy bear", "blue coffee mug | yellow teddy bear"),
        ("a wooden chair and a metallic table", "wooden chair | metallic table"),
        ("a round clock and a square mirror", "round clock | square mirror"),
        ("a red apple on a blue plate", "red apple / blue plate"),
        ("a black and white cat and a brown dog", "black white cat | brown dog"),
    ],
}  # fmt: skip

#: Families where "next to" does not fix which entity is on the left.
_EITHER_ORDER = {"next to / near", "in front of / behind"}


def _has(prompt: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", prompt, re.IGNORECASE) is not None


def check(prompt: str, expected: str, *, either_order: bool = False) -> str:
    """Why the planner's layout of ``prompt`` is wrong, or "" when it is right."""
    rows = [[r.split() for r in row.split(" | ")] for row in expected.split(" / ")]
    plan = RulesPlanner().plan(prompt).plan
    got = [[region.prompt for region in row.regions] for row in plan.rows]
    if either_order and len(got) == 1 and len(rows) == 1:
        got_row = got[0]
        if len(got_row) == 2 and all(_has(got_row[1], w) for w in rows[0][0]):
            got = [got_row[::-1]]
    if [len(r) for r in got] != [len(r) for r in rows]:
        return f"layout {[len(r) for r in got]} regions per row, expected {[len(r) for r in rows]}"
    own = [w for row in rows for w in row]
    for text, mine in zip([p for row in got for p in row], own, strict=True):
        missing = [w for w in mine if not _has(text, w)]
        if missing:
            return f"region {text!r} lacks {' '.join(missing)!r}"
        others = {w for words in own if words is not mine for w in words} - set(mine)
        leaked = sorted(w for w in others if _has(text, w))
        if leaked:
            return f"region {text!r} carries another entity's {', '.join(leaked)!r}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--failures", action="store_true", help="print the prompts it gets wrong")
    args = parser.parse_args(argv)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failures = []
    for family, cases in PROMPTS.items():
        for prompt, expected in cases:
            why = check(prompt, expected, either_order=family in _EITHER_ORDER)
            totals[family][0] += not why
            totals[family][1] += 1
            if why:
                failures.append(f"{family}: {prompt!r}: {why}")
    print(f"| {'phrasing family':<22} | correct | prompts | accuracy |")
    print(f"| {'-' * 22} | ------: | ------: | -------: |")
    right = total = 0
    for family, (ok, n) in totals.items():
        print(f"| {family:<22} | {ok:>7} | {n:>7} | {100 * ok / n:>7.1f}% |")
        right, total = right + ok, total + n
    spatial = [f for f in totals if f != "colour binding"]
    s_ok, s_n = (sum(totals[f][i] for f in spatial) for i in (0, 1))
    print(f"| {'all spatial':<22} | {s_ok:>7} | {s_n:>7} | {100 * s_ok / s_n:>7.1f}% |")
    print(f"| {'all':<22} | {right:>7} | {total:>7} | {100 * right / total:>7.1f}% |")
    if args.failures:
        print("\n".join(["", *failures]) if failures else "\nno failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
