"""Layout rules that need layers: a thing in a corner or the centre of a scene, a small thing
in or on a big one, a thing on a surface.

Rows and columns tile the canvas, so they cannot say "a bird in the top left corner of a blue
sky": the sky is all around the bird. These rules answer with boxes instead (a canvas plan,
see DESIGN.md "Canvas plans"): the entities become layers, bottom to top, and what surrounds
them is the background that the base prompt paints. The boxes are fixed fractions of the canvas
chosen to read well at any aspect ratio; a planner backed by a language model, or the editor,
places things more freely.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rpg.layout import Box
from rpg.planners.rules.layouts import Layout, places_another, read_markers
from rpg.planners.rules.lexicon import wordset
from rpg.planners.rules.phrases import (
    head_noun,
    is_entity_phrase,
    split_list,
    starts_entity,
    take_setting,
    tidy,
    words,
)

#: What a corner layer covers: this fraction of the canvas's width and height.
CORNER = 0.4
CORNER_BOXES: dict[tuple[str, str], Box] = {
    ("top", "left"): (0.0, 0.0, CORNER, CORNER),
    ("top", "right"): (1 - CORNER, 0.0, 1.0, CORNER),
    ("bottom", "left"): (0.0, 1 - CORNER, CORNER, 1.0),
    ("bottom", "right"): (1 - CORNER, 1 - CORNER, 1.0, 1.0),
}
#: A thing in the centre of a scene.
CENTRE_BOX: Box = (0.3, 0.3, 0.7, 0.7)
#: A thing resting on a surface that fills the picture (the background): the middle, a little
#: low, where a cat on a sofa or a cup on a table sits in a photo.
ON_SURFACE_BOX: Box = (0.25, 0.2, 0.75, 0.85)
#: "a small X on/in a big Y": Y fills the lower part; X sits on its top edge or inside it.
BIG_BOX: Box = (0.05, 0.35, 0.95, 0.95)
SMALL_ON_BOX: Box = (0.35, 0.1, 0.65, 0.5)
SMALL_IN_BOX: Box = (0.35, 0.5, 0.65, 0.85)

#: Things that other things rest on and that may fill a picture: "X on Y" draws X over Y.
SURFACES = wordset(
    "sofa couch armchair chair bench bed table desk counter countertop shelf windowsill tray "
    "floor carpet rug mat blanket pillow cushion grass lawn meadow field sand beach snow ice "
    "road street pavement sidewalk rock boulder log dock pier rooftop roof"
)
SMALL = wordset("small tiny little miniature")
BIG = wordset("big large huge giant enormous vast")

_VERT = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_WHERE = (
    r"(?:very\s+)?(?:(?P<v>top|bottom|upper|lower)[\s-]+(?P<h>left|right)"
    r"(?:[\s-]+hand)?(?:\s+(?:corner|side|part))?|(?P<mid>centre|center|middle))"
)
_PLACE = r"(?:in|at|on|into)\s+the\s+" + _WHERE
# "a bird (flying) in the top left corner of a blue sky"
_X_OF_Y = re.compile(rf"^(?P<x>.+?)\s+{_PLACE}\s+of\s+(?P<y>.+)$", re.IGNORECASE)
# "a blue sky with a bird in the top left corner"
_Y_WITH_X = re.compile(rf"^(?P<y>.+?)\s+with\s+(?P<x>.+?)\s+{_PLACE}$", re.IGNORECASE)
# "a blue sky, a bird in the top left corner" / "a bird in the top left corner, a blue sky"
_Y_THEN_X = re.compile(rf"^(?P<y>[^,;]+?)\s*[,;]\s*(?P<x>[^,;]+?)\s+{_PLACE}$", re.IGNORECASE)
_X_THEN_Y = re.compile(rf"^(?P<x>[^,;]+?)\s+{_PLACE}\s*[,;]\s*(?P<y>[^,;]+)$", re.IGNORECASE)
# Not a scene: "in the top left corner of the image" is a position on the canvas.
_CANVAS_WORDS = re.compile(
    r"^(?:the|this|our)\s+(?:image|picture|canvas|frame|photo|painting|scene)\b", re.IGNORECASE
)


def _one_entity(text: str) -> bool:
    """Whether ``text`` is one whole entity phrase that places no other entity."""
    text = tidy(text)
    return (
        is_entity_phrase(text)
        and starts_entity(text)
        and len(split_list(text)) == 1
        and not places_another(text)
    )


def _where(m: re.Match[str]) -> tuple[Box, str]:
    if m.group("mid"):
        return CENTRE_BOX, f'"{m.group("mid")}"'
    v, h = _VERT[m.group("v").lower()], m.group("h").lower()
    return CORNER_BOXES[(v, h)], f'"{m.group("v")} {m.group("h")}"'


def by_corner(body: str) -> Layout | None:
    """ "a bird in the top left corner of a blue sky", "a blue sky with a sun in the centre":
    the thing is a layer in a corner (or the centre) over the scene, which is the background."""
    for pattern in (_X_OF_Y, _Y_WITH_X, _Y_THEN_X, _X_THEN_Y):
        m = pattern.match(body)
        if m is None:
            continue
        scene, setting = take_setting(m.group("y").strip(" ,;"))
        thing = m.group("x")
        if _CANVAS_WORDS.match(scene.strip()) or not (_one_entity(thing) and _one_entity(scene)):
            continue
        if places_another(m.group("y")):  # "…, a dog under a horse": no scene but two things
            continue
        box, said = _where(m)
        rule = "centre" if m.group("mid") else "corner"
        why = f"{said} places one entity over a background"
        return Layout([[thing]], rule, why, context=[setting], boxes=[box], background=scene)
    return None


def by_corners(body: str) -> Layout | None:
    """ "a cat in the top left corner and a dog in the bottom right corner": corners that do
    not fill a 2 × 2 grid are layers in their corners over the background, since a grid would
    stretch each into a whole row. All four corners stay a grid."""
    found = read_markers(body)
    corners = found.corners() if found is not None else None
    if found is None or corners is None or len(set(corners)) != len(corners) or len(corners) > 3:
        return None
    boxes = [CORNER_BOXES[c] for c in corners]
    why = f"the corners {found.said} leave the rest of the canvas to the background"
    return Layout(
        [[t] for t in found.texts],
        "corners",
        why,
        lead=found.lead,
        context=[found.setting],
        boxes=boxes,
    )


def _splits(body: str, prep: str) -> Iterator[tuple[str, str, str]]:
    """Every way to read ``body`` as "<left> <preposition> <right>", left to right."""
    for m in re.finditer(rf"\s+(?P<prep>{prep})\s+", body, re.IGNORECASE):
        yield body[: m.start()], m.group("prep").lower(), body[m.end() :]


def _size_words(text: str, among: frozenset[str]) -> bool:
    """Whether ``text``'s first words (before its noun) hold one of ``among``."""
    return bool(set(words(text)[:3]) & among)


def by_size(body: str) -> Layout | None:
    """ "a small boat on a big lake", "a tiny mouse in a huge shoe": the big thing is a large
    layer, the small one a small layer on its top edge or inside it."""
    for thing, prep, rest in _splits(body, r"on\s+top\s+of|on|atop|upon|inside|in"):
        big, setting = take_setting(rest)
        if not (_size_words(thing, SMALL) and _size_words(big, BIG)) or places_another(rest):
            continue
        if not (_one_entity(thing) and _one_entity(big)):
            continue
        inside = prep in ("in", "inside")
        boxes = [BIG_BOX, SMALL_IN_BOX if inside else SMALL_ON_BOX]
        why = f'"small … {prep} big …" puts a small layer {"inside" if inside else "on"} a big one'
        return Layout([[big], [thing]], "size", why, context=[setting], boxes=boxes)
    return None


def by_surface(body: str) -> Layout | None:
    """ "a cat sitting on a sofa", "a red apple on a wooden table": the surface fills the
    picture as the background and the thing is a layer resting on it."""
    for thing, _prep, rest in _splits(body, r"on|upon"):
        surface, setting = take_setting(rest)
        if places_another(rest):  # "a cat on a sofa next to a dog": the dog is no setting
            continue
        head = head_noun(surface).split()
        if not head or (head[-1] not in SURFACES and head[-1].rstrip("s") not in SURFACES):
            continue
        if not (_one_entity(thing) and _one_entity(surface)):
            continue
        why = f'"on {tidy(surface)}" sets one entity on a surface'
        return Layout(
            [[thing]],
            "surface",
            why,
            context=[setting],
            boxes=[ON_SURFACE_BOX],
            background=surface,
        )
    return None
