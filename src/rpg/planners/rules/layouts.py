"""The grid layout rules: each reads one kind of spatial wording and returns rows of entity
phrases.

The planner tries them in the order of :data:`rpg.planners.rules.planner.RULES`, most specific
first, and keeps the first whose every region is a whole entity phrase. Each rule names itself
and says why it laid the prompt out the way it did, which ``rpg plan --explain`` prints.

Depth ("in front of", "behind") cannot be drawn on a grid of rectangles, so both entities get
a region in one row, in the order the prompt names them; the words stay in the base prompt.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rpg.layout import Box
from rpg.planners.rules.lexicon import COLOURS, POSSESSIVES, SCENE_NOUNS
from rpg.planners.rules.phrases import (
    POSITION_WORDS,
    as_description,
    head_is_worn,
    head_noun,
    indefinite,
    is_setting,
    shared_setting,
    singular,
    split_and,
    split_list,
    starts_entity,
    take_setting,
    tidy,
    words,
)
from rpg.planners.text_reply import split_outside_brackets


@dataclass
class Layout:
    """Rows (top to bottom) of entity phrases (left to right), and where they came from.

    A canvas layout (``boxes`` given) holds one entity per row, each a layer bottom to top
    painted in its box, over a ``background`` (empty: the whole prompt paints it).
    """

    rows: list[list[str]]
    rule: str
    reason: str  # what the rule read, e.g. 'the relation "left of"'
    lead: str = ""  # words before the layout ("A couple in a cafe"): context or base only
    context: list[str] = field(default_factory=list)  # words every region shares
    boxes: list[Box] = field(default_factory=list)  # a canvas: one box per entity
    background: str = ""  # a canvas: what paints where no layer does

    def __post_init__(self) -> None:
        if self.boxes and len(self.boxes) != len(self.rows):
            raise ValueError("a canvas layout needs one box per entity")
        rows = [[tidy(e) for e in row] for row in self.rows]
        if self.boxes:  # a layer whose words tidy away is dropped with its box
            kept = [(r, b) for r, b in zip(rows, self.boxes, strict=True) if all(r)]
            rows, self.boxes = [r for r, _ in kept], [b for _, b in kept]
        self.rows = [row for row in rows if row]
        self.background = tidy(self.background)

    @property
    def entities(self) -> list[str]:
        """The entity phrases in reading order (a canvas: its layers bottom to top)."""
        return [e for row in self.rows for e in row]

    @property
    def is_canvas(self) -> bool:
        """Whether the layout is layers in boxes rather than rows and columns."""
        return bool(self.boxes)

    @property
    def why(self) -> str:
        """What the rule read and the layout it made of it."""
        if self.boxes:
            return f"{self.reason}: {_describe_layers(self.entities, self.boxes, self.background)}"
        return f"{self.reason}: {_describe_rows(self.rows)}"


def _quote(items: list[str]) -> str:
    return " | ".join(items)


def _describe_layers(entities: list[str], boxes: list[Box], background: str) -> str:
    said = ", ".join(
        f"[{e}] in box ({', '.join(f'{c:g}' for c in box)})"
        for e, box in zip(entities, boxes, strict=True)
    )
    ground = f"[{background}]" if background else "the whole prompt"
    return f"layers bottom to top {said}, over the background {ground}"


def _describe_rows(rows: list[list[str]]) -> str:
    if len(rows) == 1:
        return f"one row [{_quote(rows[0])}]"
    return "rows top to bottom " + ", ".join(f"[{_quote(r)}]" for r in rows)


# ------------------------------------------------------------------ sequences: "from left to right"

_SEQUENCE = re.compile(
    r"\b(?:from\s+)?(?P<a>left|right|top|bottom)\s+to\s+(?:the\s+)?(?P<b>left|right|top|bottom)\b"
    r"\s*[:,]?",
    re.IGNORECASE,
)


def by_sequence(body: str) -> Layout | None:
    """ "from left to right, A, B and C" (or right to left, top to bottom, bottom to top)."""
    m = _SEQUENCE.search(body)
    if m is None:
        return None
    a, b = m.group("a").lower(), m.group("b").lower()
    horizontal = {a, b} == {"left", "right"}
    if not horizontal and {a, b} != {"top", "bottom"}:
        return None
    lead, rest = body[: m.start()], body[m.end() :]
    trailing = ""
    if not tidy(rest) or is_setting(rest):  # "A, B and C from left to right (in a park)"
        lead, rest, trailing = "", lead, tidy(rest)
    items, setting = shared_setting(split_list(rest, listing=True))
    setting = setting or trailing
    if a in ("right", "bottom"):
        items.reverse()
    rows = [items] if horizontal else [[i] for i in items]
    why = f'"{m.group(0).strip(" ,:")}" orders {len(items)} entities'
    return Layout(rows, "sequence", why, lead=lead, context=[setting])


# ------------------------------------------------------------------ absolute positions

_PLACE_OF = r"(?:image|picture|canvas|frame|scene|photo|painting)"
_MARKER = re.compile(
    # "on the left", "in the top right corner", or a bare corner starting a clause ("top left")
    r"(?:\b(?:on|to|at|in|into)\s+(?:the\s+)?(?:far\s+)?|"
    r"(?:^|(?<=[,;:.]))\s*(?=(?:top|bottom|upper|lower)[\s-]+(?:left|right)\b)|"
    # a label at the start of a clause: "left: a red car, right: a blue bus"
    r"(?:^|(?<=[,;:.]))\s*(?=(?:left|right|middle|center|centre|top|bottom)\s*:))(?:"
    r"(?P<corner_v>top|bottom|upper|lower)[\s-]+(?P<corner_h>left|right)|"
    r"(?P<pos>left|right|middle|center|centre|top|bottom))"
    r"(?:\s+(?:side|half|part|corner|edge|third|row))?\b"
    rf"(?:\s+of\s+the\s+{_PLACE_OF}\b|(?!\s+of\b))\s*[:,]?"
    r"|\b(?P<between>(?:in\s+)?between\s+them|in\s+between)\b\s*[:,]?",  # the middle
    re.IGNORECASE,
)
_ROW = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_COL = {"left": 0, "right": 2}
_LABEL = re.compile(rf"\b(?:{POSITION_WORDS})\s*:", re.IGNORECASE)


def places_another(text: str) -> bool:
    """Whether a region's words place a further entity ("a dog, on the right a horse", "a dog
    between a horse", "a cup next to a plate"): such a region would draw two entities, so the
    layout that made it is not used."""
    found = (*_MARKER.finditer(text), *_BETWEEN.finditer(text), *_LABEL.finditer(text))
    after = [text[m.end() :] for m in found]
    return (
        any(starts_entity(tidy(a), strict=True) for a in after)
        or bool(_relations(text))
        or len(split_list(text)) > 1  # "a cat and a dog" or "a cat, a dog" in one cell
    )


@dataclass
class _Placed:
    text: str
    row: int | None
    col: int | None


def _place(m: re.Match[str]) -> tuple[int | None, int | None, bool]:
    """Row, column and is-middle of a position marker."""
    if m.group("corner_v"):
        return _ROW[m.group("corner_v").lower()], _COL[m.group("corner_h").lower()], False
    pos = "middle" if m.group("between") else m.group("pos").lower()
    return _ROW.get(pos), _COL.get(pos), pos not in _ROW and pos not in _COL


def _grid(places: list[tuple[int | None, int | None, bool]], texts: list[str]) -> list[list[str]]:
    """Arrange marked texts: rows from top/bottom markers, columns from left/right ones."""
    has_cols = any(c is not None for _, c, _ in places)
    has_rows = any(r is not None for r, _, _ in places)
    placed: list[_Placed] = []
    current_row: int | None = None
    for (row, col, middle), text in zip(places, texts, strict=True):
        if middle:
            row, col = (None, 1) if has_cols else (1, None)
        if row is not None:
            current_row = row
        if row is not None and col is None and has_cols and not tidy(text):
            continue  # "at the bottom, on the left A and on the right B": a row heading
        placed.append(_Placed(text, row if row is not None else current_row, col))
    if has_rows and has_cols:
        placed = [_Placed(p.text, 1 if p.row is None else p.row, p.col) for p in placed]
    grid: list[list[str]] = []
    for key in sorted({p.row if p.row is not None else 0 for p in placed}):
        in_row = [p for p in placed if (p.row if p.row is not None else 0) == key]
        if has_cols:
            in_row.sort(key=lambda p: 1 if p.col is None else p.col)  # stable: text order
            grid.append([p.text for p in in_row])
        else:
            # "at the bottom a cat and a dog": the entities of one row stand side by side
            grid.extend(split_and(p.text.strip(" ,;:")) for p in in_row)
    return grid


@dataclass
class Marked:
    """A prompt read as position markers, each with the words it places."""

    marks: list[re.Match[str]]
    texts: list[str]
    lead: str
    setting: str

    @property
    def said(self) -> str:
        return ", ".join(f'"{m.group(0).strip(" ,:")}"' for m in self.marks)

    def corners(self) -> list[tuple[str, str]] | None:
        """Each marker's corner ("top", "left"), or None unless every marker names one."""
        if not all(m.group("corner_v") for m in self.marks):
            return None
        vert = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
        return [(vert[m["corner_v"].lower()], m["corner_h"].lower()) for m in self.marks]


def read_markers(body: str) -> Marked | None:
    """The position markers of ``body`` and the words each places, given before or after it."""
    marks = list(_MARKER.finditer(body))
    if len(marks) < 2:
        return None
    lead = body[: marks[0].start()]
    tail = body[marks[-1].end() :]
    postfix = bool(tidy(lead)) and (not tidy(tail) or is_setting(tail))
    setting = ""
    if postfix:
        texts = [body[(marks[i - 1].end() if i else 0) : m.start()] for i, m in enumerate(marks)]
        setting = take_setting(tail.strip(" ,"), whole=True)[1] if tidy(tail) else ""
        lead = ""
    else:
        ends = [m.start() for m in marks[1:]] + [len(body)]
        texts, setting = shared_setting(
            [body[m.end() : e] for m, e in zip(marks, ends, strict=True)]
        )
    if _relations(lead):
        return None  # "a cat under a dog on the left, …": the lead is no shared context
    return Marked(marks, texts, lead, setting)


def by_markers(body: str) -> Layout | None:
    """ "on the left A, in the middle B, on the right C", "at the top A, at the bottom B",
    and the same with the positions after the entities ("A on the left and B on the right")."""
    found = read_markers(body)
    if found is None:
        return None
    rows = _grid([_place(m) for m in found.marks], found.texts)
    why = f"the positions {found.said} place the entities"
    return Layout(rows, "positions", why, lead=found.lead, context=[found.setting])


_DESCRIBED = re.compile(
    # "the boy on the left wears a green cap": a short noun phrase that opens a clause, then its
    # position, then what it is or does.
    r"(?:^|(?<=[,;:.])|(?<=\band)|(?<=\bwhile)|(?<=\bwhereas))\s*"
    r"(?P<np>(?:the|a|an|one)\s+(?:[\w-]+\s+){0,2}?[\w-]+)\s+(?:(?:is|sits|stands)\s+)?"
    rf"(?:on|to|at|in)\s+(?:the\s+)?(?:far\s+)?(?P<pos>{POSITION_WORDS})"
    r"(?![\s-]+(?:left|right)\b)"  # "in the top left corner" is a corner, for the markers
    r"(?:\s+(?:side|corner))?\b"
    rf"(?:\s+of\s+the\s+{_PLACE_OF}\b|(?!\s+of\b))\s*,?\s+(?P<pred>\S)",
    re.IGNORECASE,
)


def by_described_positions(body: str) -> Layout | None:
    """ "Two boys playing chess, the boy on the left wears a green cap and the boy on the right
    wears glasses": positioned noun phrases each followed by their own description."""
    found = list(_DESCRIBED.finditer(body))
    if len(found) < 2:
        return None
    ends = [m.start() for m in found[1:]] + [len(body)]
    if _MARKER.search(body[: found[0].start()]):
        return None  # "X on the left, the Y in the middle …": positions after plain entities
    texts = []
    for m, end in zip(found, ends, strict=True):
        predicate = re.sub(
            r"[\s,;]*(?:\band|\bwhile|\bwhereas)?[\s,;.]*$", "", body[m.start("pred") : end]
        )
        if not predicate or _MARKER.search(predicate) or starts_entity(predicate, strict=True):
            # "a cat on the left, dog in the middle and …" or "…, a dog …": the words after a
            # position are another positioned entity, not this one's description
            return None
        texts.append(f"{indefinite(m.group('np'))} {as_description(predicate)}".strip())
    lead = tidy(body[: found[0].start()])
    context = ""
    if lead:
        group = re.match(r"^(?:\S+\s+){0,3}?(?P<noun>[\w-]+)\b\s*(?P<rest>.*)$", lead)
        nouns = {singular(head_noun(m.group("np"))) for m in found}
        if group and singular(group.group("noun").lower()) in nouns:
            context = tidy(group.group("rest"))  # "Two boys playing chess" -> "playing chess"
        elif is_setting(lead):
            context = lead
    places = []
    for m in found:
        pos = m.group("pos").lower()
        places.append((_ROW.get(pos), _COL.get(pos), pos not in _ROW and pos not in _COL))
    rows = _grid(places, texts)
    said = ", ".join(f'"{m.group("np")} … {m.group("pos")}"' for m in found)
    why = f"{said} describe one entity each"
    return Layout(rows, "described positions", why, lead=lead, context=[context])


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


def _relations(body: str) -> list[re.Match[str]]:
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
    rels = _relations(body)
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


_BETWEEN = re.compile(r"\s+(?:is\s+|are\s+)?(?:right\s+|halfway\s+)?between\s+", re.IGNORECASE)


def by_between(body: str) -> Layout | None:
    """ "A between B and C": one row [B, A, C]."""
    m = _BETWEEN.search(body)
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
