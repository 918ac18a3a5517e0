"""The grid layout rules: each reads one kind of spatial wording and returns rows of entity
phrases.

The planner tries them in the order of :data:`rpg.planners.rules.planner.RULES`, most specific
first, and keeps the first whose every region is a whole entity phrase. Each rule names itself
and says why it laid the prompt out the way it did, which ``rpg plan --explain`` prints.

Depth ("in front of", "behind") cannot be drawn on a grid of rectangles, so both entities get
a region in one row, in the order the prompt names them; the words stay in the base prompt.

The rules live by the wording they read: :mod:`~rpg.planners.rules.positions` (sequences and
named places), :mod:`~rpg.planners.rules.relations` (between entities) and the lists below;
:class:`Layout` is in :mod:`~rpg.planners.rules.layout_result`. This module gathers them in
:data:`GRID_RULES`, and every name is importable from here as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from rpg.planners.rules.layout_result import Layout
from rpg.planners.rules.lexicon import SCENE_NOUNS
from rpg.planners.rules.phrases import (
    shared_setting,
    split_and,
    split_list,
    starts_entity,
    tidy,
)
from rpg.planners.rules.positions import (
    Marked,
    by_described_positions,
    by_markers,
    by_sequence,
    places_another,
    read_markers,
)
from rpg.planners.rules.relations import by_between, by_relation
from rpg.planners.text_reply import split_outside_brackets

__all__ = [
    "GRID_RULES",
    "Layout",
    "Marked",
    "by_and",
    "by_between",
    "by_described_positions",
    "by_markers",
    "by_relation",
    "by_scene_with",
    "by_sequence",
    "places_another",
    "read_markers",
]


# ------------------------------------------------------------------ lists: "A and B"

_SCENE_WITH = re.compile(
    r"^(?P<scene>(?:(?:a|an|the)\s+)?(?:[\w-]+\s+){0,3}?(?P<noun>[\w-]+))\s+"
    r"(?P<verb>with|has|have|features|contains|containing)\s+(?P<rest>.+)$",
    re.IGNORECASE,
)


def by_scene_with(body: str) -> Layout | None:
    """ "a bathroom with green tile and a red shower curtain": the things are the entities and
    the place is the setting they share."""
    m = _SCENE_WITH.match(body)
    if m is None or m.group("noun").lower() not in SCENE_NOUNS:
        return None
    parts = split_list(m.group("rest"), listing=True)
    if len(parts) < 2 or not all(parts):
        return None
    scene = m.group("scene")
    prep = "on" if m.group("noun").lower() in ("table", "desk", "shelf") else "in"
    article = "" if starts_entity(scene) else "a "
    setting = f"{prep} {article}{scene[:1].lower() + scene[1:]}"
    why = f'"{scene} {m.group("verb")} …" holds {len(parts)} entities'
    return Layout([parts], "scene with", why, context=[setting])


def by_and(body: str) -> Layout | None:
    """ "A and B" (or "A, B and C") when every part starts like a separate entity: one row in
    the order of the prompt, each entity with its own attributes."""
    if not starts_entity(body):
        return None
    pieces = [p.strip() for p in split_outside_brackets(body, ",") if p.strip()]
    if len(pieces) > 1 and not all(
        starts_entity(p.removeprefix("and "), strict=True) for p in pieces
    ):
        pieces = [body]  # commas belong to descriptions; only "and" can split
    items = [i for p in pieces for i in split_and(p.removeprefix("and "))]
    if len(items) < 2:
        return None
    items, setting = shared_setting([tidy(i) for i in items])
    why = f"{len(items)} separate entities, side by side in the order named"
    return Layout([items], "and", why, context=[setting])


#: The grid rules in the order they are tried (the planner puts the canvas rules among them).
GRID_RULES: tuple[Callable[[str], Layout | None], ...] = (
    by_sequence,
    by_described_positions,
    by_markers,
    by_between,
    by_relation,
    by_scene_with,
    by_and,
)
