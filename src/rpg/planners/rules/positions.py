"""Layout rules for positions the prompt names: sequences ("from left to right, A, B and C")
and absolute places ("on the left A, on the right B", "in the top right corner A").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rpg.planners.rules.layout_result import Layout
from rpg.planners.rules.phrases import (
    POSITION_WORDS,
    as_description,
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
)
from rpg.planners.rules.relations import BETWEEN, relations_in

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
    found = (*_MARKER.finditer(text), *BETWEEN.finditer(text), *_LABEL.finditer(text))
    after = [text[m.end() :] for m in found]
    return (
        any(starts_entity(tidy(a), strict=True) for a in after)
        or bool(relations_in(text))
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
    if relations_in(lead):
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
