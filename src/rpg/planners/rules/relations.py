"""Layout rules for relations between entities: "A left of B", "A above B", "A next to B",
"A behind B" (depth: one row, the words kept for the base prompt), "A between B and C".
"""

from __future__ import annotations

import itertools
import re

from rpg.planners.rules.layout_result import Layout
from rpg.planners.rules.lexicon import COLOURS, POSSESSIVES
from rpg.planners.rules.phrases import (
    head_is_worn,
    head_noun,
    split_list,
    take_setting,
    tidy,
    words,
)

# ------------------------------------------------------------------ relations between entities

#: Relation phrases and what they mean for "A <relation> B".
_RELATIONS: tuple[tuple[str, str], ...] = (
    ("left", r"(?:(?:on|to|at)\s+)?(?:the\s+)?left(?:\s+hand)?(?:\s+side)?\s+of"),
    ("right", r"(?:(?:on|to|at)\s+)?(?:the\s+)?right(?:\s+hand)?(?:\s+side)?\s+of"),
    ("above", r"(?:on|at)\s+(?:the\s+)?top\s+of|atop|above|over"),
    ("below", r"(?:on|at)\s+(?:the\s+)?bottom\s+of|underneath|under|below|beneath"),
    ("beside", r"next\s+to|beside|near(?:\s+to)?|close\s+to|(?:on|at)\s+(?:the\s+)?side\s+of|"
               r"alongside|by"),
    ("depth", r"in\s+front\s+of|behind"),
    # bare "on" / "in" only between two entities that both carry a colour ("a red apple on a
    # blue plate"): one region would bind both colours; otherwise "on a table" is a setting
    ("on", r"on|in(?:side)?"),
)  # fmt: skip
_MEANING = {
    "left": "A left of B",
    "right": "A right of B",
    "above": "A above B",
    "below": "A below B",
    "beside": "side by side",
    "depth": "depth: side by side in one row",
    "on": "both coloured: A above B",
}
_RELATION = re.compile(
    r"(?:\s*,)?\s+(?:(?:that|which|who)\s+)?"
    r"(?:(?:is|are|was|were|sits|sit|sat|stands|stand|stood|placed|positioned|located|lies|lay)\s+)?"
    r"(?P<rel>"
    + "|".join(f"(?P<{name}>{pattern})" for name, pattern in _RELATIONS)
    + r")\s+(?!(?:the\s+)?(?:image|picture|canvas|frame|photo)\b)",
    re.IGNORECASE,
)
_PRONOUNS = frozenset({"it", "him", "them", "itself", "himself", "herself", "themselves"})
# "standing by a lake", "posing in front of a barn": where a group is, not a relation.
_SETTING_VERB = re.compile(r"\b[a-z]+ing\s*$", re.IGNORECASE)
_PASSIVE_BY = re.compile(
    r"\b(?:painted|drawn|made|created|illustrated|photographed|inspired|written|designed|"
    r"chased|followed|surrounded|covered|pulled|driven|ridden)\s*$",
    re.IGNORECASE,
)


def _kind(m: re.Match[str]) -> str:
    return next(name for name, _ in _RELATIONS if m.group(name))


def _attributed(found: list[str]) -> bool:
    """Whether a noun phrase's words hold a colour (and no position word)."""
    return bool(set(found) & COLOURS) and not set(found) & {"left", "right", "top", "bottom"}


def relations_in(body: str) -> list[re.Match[str]]:
    """The relation phrases of ``body`` that stand between two entities."""
    found = []
    for m in _RELATION.finditer(body):
        before, after = body[: m.start()], body[m.end() :]
        kind = _kind(m)
        word = m.group("rel").lower()
        if not tidy(before) or set(words(after)[:1]) & (POSSESSIVES | _PRONOUNS):
            continue  # "a hat over his eyes": a part of the same entity
        if (kind == "depth" or word == "by") and _SETTING_VERB.search(before):
            continue
        if word == "by" and _PASSIVE_BY.search(before):
            continue
        if kind == "on" and not (
            _attributed(words(before)[-3:])
            and _attributed(words(after)[:3])
            and not head_is_worn(after)  # "a white cat in a red hat" is one entity
        ):
            continue
        found.append(m)
    if any(_kind(m) != "on" for m in found):  # "next to a white bicycle on a green lawn"
        found = [m for m in found if _kind(m) != "on"]
    return found


def _group(piece: str) -> list[str]:
    """The entities of one side of a relation: "a cat and a dog" -> two."""
    return [t for t in (tidy(i) for i in split_list(piece)) if t]


def _order(
    n: int, before: list[tuple[int, int]], same: list[tuple[int, int]]
) -> list[list[int]] | None:
    """Levels 0..k of n items from "a before b" pairs and "a with b" pairs; None on a cycle."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in same:
        parent[find(b)] = find(a)
    level = {find(i): 0 for i in range(n)}
    for _ in range(n + 1):
        changed = False
        for a, b in before:
            ra, rb = find(a), find(b)
            if ra == rb:
                return None
            if level[rb] < level[ra] + 1:
                level[rb] = level[ra] + 1
                changed = True
        if not changed:
            break
    else:
        return None  # a cycle kept raising levels
    by_level: dict[int, list[int]] = {}
    for i in range(n):
        by_level.setdefault(level[find(i)], []).append(i)
    return [by_level[k] for k in sorted(by_level)]


def _sort_row(items: list[int], left_of: list[tuple[int, int]]) -> list[int] | None:
    """Items of one row ordered by "a left of b" pairs, else by the order the prompt names them."""
    out: list[int] = []
    todo = sorted(items)
    while todo:
        free = [i for i in todo if not any(b == i and a in todo for a, b in left_of)]
        if not free:
            return None
        out.append(free[0])
        todo.remove(free[0])
    return out


def by_relation(body: str) -> Layout | None:
    """ "A on the left of B", "A above B", "A under B", "A next to B", "A behind B", chains of
    them ("A above B, next to C") and groups ("A and B under C")."""
    rels = relations_in(body)
    if not rels:
        return None
    pieces = [body[: rels[0].start()]]
    pieces += [body[m.end() : n.start()] for m, n in itertools.pairwise(rels)]
    pieces.append(body[rels[-1].end() :])
    last, setting = take_setting(pieces[-1])
    pieces[-1] = last
    names: list[str] = []
    groups: list[list[int]] = []  # the entities on each side of each relation
    for piece in pieces:
        group = []
        for item in _group(piece):
            same = _same_entity(item, names)
            if same is None:
                names.append(item)
                same = len(names) - 1
            group.append(same)
        if not group:
            return None
        groups.append(group)
    # "A left of B and C above D": between two relations, "and" starts the next clause.
    sides = [(groups[0], groups[1])]
    for k in range(1, len(rels)):
        middle = groups[k]
        if len(middle) > 1:
            sides[-1] = (sides[-1][0], middle[:-1])
            sides.append(([middle[-1]], groups[k + 1]))
        else:
            sides.append((middle, groups[k + 1]))
    vertical: list[tuple[int, int]] = []
    horizontal: list[tuple[int, int]] = []
    same_row = [(g[0], i) for side in sides for g in side for i in g[1:]]
    said = []
    for k, m in enumerate(rels):
        kind = _kind(m)
        a_side, b_side = sides[k]
        pairs = [(a, b) for a in a_side for b in b_side]
        if kind in ("left", "beside", "depth"):
            horizontal += pairs if kind == "left" else []
            same_row += pairs
        elif kind == "right":
            horizontal += [(b, a) for a, b in pairs]
            same_row += pairs
        elif kind in ("above", "on"):
            vertical += pairs
        else:
            vertical += [(b, a) for a, b in pairs]
        said.append(f'"{m.group("rel")}" ({_MEANING[kind]})')
    levels = _order(len(names), vertical, same_row)
    if levels is None:
        return None
    rows = []
    for level in levels:
        ordered = _sort_row(level, horizontal)
        if ordered is None:
            return None
        rows.append([names[i] for i in ordered])
    why = f"the relation{'s' if len(rels) > 1 else ''} {', '.join(said)}"
    return Layout(rows, "relation", why, context=[setting])


def _same_entity(item: str, names: list[str]) -> int | None:
    """ "the dog" after "a dog" is the same entity."""
    if not item.lower().startswith("the "):
        return None
    noun = head_noun(item)
    for i, name in enumerate(names):
        if head_noun(name) == noun:
            return i
    return None


BETWEEN = re.compile(r"\s+(?:is\s+|are\s+)?(?:right\s+|halfway\s+)?between\s+", re.IGNORECASE)


def by_between(body: str) -> Layout | None:
    """ "A between B and C": one row [B, A, C]."""
    m = BETWEEN.search(body)
    if m is None:
        return None
    middle = tidy(body[: m.start()])
    rest, setting = take_setting(body[m.end() :])
    sides = [tidy(s) for s in re.split(r"\s*(?:,|\band\b)\s*", rest, maxsplit=1)]
    if len(sides) != 2 or not middle or not all(sides):
        return None
    rows = [[sides[0], middle, sides[1]]]
    why = f'"between" puts "{middle}" in the middle'
    return Layout(rows, "between", why, context=[setting])
