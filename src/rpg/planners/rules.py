"""An offline planner that reads spatial cues from English prompts, with no model at all.

It is the default when no language model is configured, so it must be predictable: the same
prompt always gives the same plan, and a prompt without spatial structure gives one full-canvas
region rather than a guess. It understands "from left to right, A, B and C", "on the left A, on
the right B" (also middle/centre), "at the top A, at the bottom B" (rows), corners such as
"top left", "A next to B", "A beside B", "A to the left of B" and "A and B". Shared context - a
setting such as "on a wooden table" and a style such as "a photo of" or ", oil painting" - is
kept in every regional prompt and in the base prompt.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.errors import ConfigurationError, PlannerError
from rpg.models import DEFAULT_BASE_RATIO, Entity, PlanResult, Recaption, Region, RegionPlan, Row
from rpg.planners.template import split_outside_brackets

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["RulesPlanner"]


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DETERMINERS = _wordset(
    "a an the one two three four five six seven eight nine ten some several many his her their "
    "my our its this that these those another each"
)
# Nouns that follow "and"/"in" as part of an entity's description rather than as a new entity
# or a setting: "a girl with a hat and a scarf", "a man in a red coat".
_WORN = _wordset(
    "dress shirt t-shirt coat jacket hat cap suit hoodie raincoat uniform robe sweater skirt jeans "
    "trousers pants armor armour gown scarf kimono tuxedo costume boots shoes glasses sunglasses "
    "clothes outfit cloak apron vest pajamas overalls helmet mask tie bow necklace earrings "
    "gloves crown veil braid ponytail beard moustache mustache eyes hair smile"
)
_POSITION_WORDS = r"left|right|middle|center|centre|top|bottom|foreground|background"
_SETTING_PREP = (
    r"on|in|at|under|underneath|beneath|inside|against|atop|near|by|in\s+front\s+of|"
    r"on\s+top\s+of|over|among|amid"
)
_SETTING = re.compile(
    rf"(?:^|,\s*|\s)(?P<phrase>(?:{_SETTING_PREP})\s+(?!(?:the\s+)?(?:far\s+)?(?:{_POSITION_WORDS})\b)"
    r"(?:a|an|the|some|his|her|their)\b.*)$",
    re.IGNORECASE,
)
_STYLE_PREFIX = re.compile(
    r"^(?:(?:an?|the)\s+)?(?:(?!(?:with|holding|and|of|in|on|at)\b)[\w-]+\s+){0,2}?"
    r"(?:photo(?:graph)?|painting|drawing|illustration|render(?:ing)?|sketch|watercolou?r|"
    r"picture|image|artwork|poster|shot|close-up|closeup|3d\s+render)\s+of\s+",
    re.IGNORECASE,
)
_STYLE_WORDS = re.compile(
    r"\b(?:style|painting|photo(?:graph|graphy)?|photorealistic|realistic|illustration|render|"
    r"rendering|4k|8k|hd|hdr|uhd|detailed|cinematic|lighting|watercolou?r|sketch|anime|art|"
    r"artwork|oil|pastel|bokeh|masterpiece|octane|unreal|studio|film|35mm|dslr|sharp|focus|"
    r"vibrant|pixel|lowpoly|low-poly|isometric|minimalist|surreal)\b",
    re.IGNORECASE,
)
_IN_STYLE_OF = re.compile(r",?\s*\bin\s+the\s+style\s+of\s+[^,]+", re.IGNORECASE)
_SEQUENCE = re.compile(
    r"\b(?:from\s+)?(?P<a>left|right|top|bottom)\s+to\s+(?:the\s+)?(?P<b>left|right|top|bottom)\b"
    r"\s*[:,]?",
    re.IGNORECASE,
)
_PLACE_OF = r"(?:image|picture|canvas|frame|scene|photo|painting)"
_MARKER = re.compile(
    # "on the left", "in the top right corner", or a bare corner starting a clause ("top left")
    r"(?:\b(?:on|to|at|in|into)\s+(?:the\s+)?(?:far\s+)?|"
    r"(?:^|(?<=[,;:.]))\s*(?=(?:top|bottom|upper|lower)[\s-]+(?:left|right)\b))(?:"
    r"(?P<corner_v>top|bottom|upper|lower)[\s-]+(?P<corner_h>left|right)|"
    r"(?P<pos>left|right|middle|center|centre|top|bottom))"
    r"(?:\s+(?:side|half|part|corner|edge|third|row))?\b"
    rf"(?:\s+of\s+the\s+{_PLACE_OF}\b|(?!\s+of\b))\s*[:,]?",
    re.IGNORECASE,
)
_RELATION = re.compile(
    r"\s*,?\s*\b(?P<rel>next\s+to|beside|alongside|to\s+the\s+(?P<side>left|right)\s+of)\s+",
    re.IGNORECASE,
)
_LEADING_FILLER = re.compile(
    r"^(?:(?:and|while|with|whereas|then|also)\b\s*)*"
    r"(?:(?:there\s+(?:is|are|stands|sits)|we\s+see|you\s+see|is|are|stands|sits|lies)\b\s*)?",
    re.IGNORECASE,
)
_TRAILING_FILLER = re.compile(
    r"(?:\s+(?:and|while|is|are|stands|sits|lies|standing|sitting|placed|positioned))+$",
    re.IGNORECASE,
)


@dataclass
class _Segment:
    text: str
    row: int | None
    col: int | None


def _norm(text: str) -> str:
    return " ".join(text.split())


def _tidy(text: str) -> str:
    """Strip separators and filler words that join clauses but belong to no entity."""
    prev = None
    text = text.strip()
    while prev != text:
        prev = text
        text = text.strip(" ,;:.!-")
        text = _LEADING_FILLER.sub("", text)
        text = _TRAILING_FILLER.sub("", text)
    return text


def _starts_entity(text: str) -> bool:
    words = text.strip().split(maxsplit=1)
    return bool(words) and (words[0].lower() in _DETERMINERS or words[0].isdigit())


def _head_is_worn(text: str) -> bool:
    """Whether a phrase such as "a red scarf" names something worn or a body feature."""
    words = re.findall(r"[\w-]+", text.lower().split(",")[0])
    return any(w in _WORN or w.rstrip("s") in _WORN for w in words[:5])


def _split_and(piece: str) -> list[str]:
    """Split "A and B" where B starts like a new entity ("and a dog", not "and blue eyes")."""
    parts = re.split(r"\s+and\s+", piece)
    out = [parts[0]]
    for part in parts[1:]:
        if _starts_entity(part) and not _head_is_worn(part):
            out.append(part)
        else:
            out[-1] = f"{out[-1]} and {part}"
    return out


def _split_list(text: str) -> list[str]:
    """Split "A, B and C" into entities; pieces that do not start like an entity stay attached."""
    items: list[str] = []
    for piece in split_outside_brackets(text, ","):
        piece = piece.strip()
        if not piece:
            continue
        if piece.lower().startswith("and "):
            piece = piece[4:]
        sub = _split_and(piece)
        if items and not _starts_entity(sub[0]):
            items[-1] = f"{items[-1]}, {sub[0]}"
            sub = sub[1:]
        items.extend(sub)
    return [t for t in (_tidy(i) for i in items) if t]


def _take_setting(text: str, *, whole: bool = False) -> tuple[str, str]:
    """Split a trailing setting ("on a wooden table") off a phrase: ``(rest, setting)``.

    With ``whole=True`` the phrase may be nothing but a setting ("In a cafe").
    """
    search_from = 0
    while True:
        m = _SETTING.search(text, search_from)
        if m is None:
            return text, ""
        phrase = m.group("phrase")
        entity = text[: m.start()].strip(" ,")
        first_word = phrase.split(maxsplit=1)[0].lower()
        if (not entity and not whole) or (first_word == "in" and _head_is_worn(phrase)):
            search_from = m.start("phrase") + 1
            continue
        return entity, _tidy(phrase)


def _lower_first(text: str) -> str:
    """ "In a cafe" -> "in a cafe", but keep acronyms ("NYC")."""
    return text if text[:2].isupper() else text[:1].lower() + text[1:]


def _join_names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _entity_of(text: str) -> Entity:
    """Name and attributes of an entity phrase: "a girl with red hair and a hat"."""
    m = re.match(
        r"^(?P<name>.+?)\s+(?:with|wearing|holding|in|who|that|having)\s+(?P<rest>.+)$", text
    )
    name, rest = (m.group("name"), m.group("rest")) if m else (text, "")
    name = re.sub(r"^(?:a|an|the)\s+", "", name, flags=re.IGNORECASE).strip() or text
    attributes = [a.strip() for a in re.split(r",|\s+and\s+", rest) if a.strip()]
    return Entity(name=name, attributes=attributes)


class RulesPlanner:
    """Deterministic planner driven by spatial phrases; needs no model and no network.

    ``base_ratio`` is the weight of the base prompt in every region of a multi-region plan;
    ``use_base=False`` plans without a base prompt.
    """

    name = "rules"

    def __init__(
        self, *, base_ratio: float = DEFAULT_BASE_RATIO, use_base: bool = True, **unknown: Any
    ) -> None:
        if unknown:
            raise ConfigurationError(
                f"the rules planner takes no option {', '.join(map(repr, sorted(unknown)))}; "
                "it accepts base_ratio and use_base"
            )
        if not 0 <= base_ratio <= 1:
            raise ConfigurationError(f"base_ratio must be between 0 and 1, got {base_ratio}")
        self.base_ratio = float(base_ratio)
        self.use_base = bool(use_base)

    def __repr__(self) -> str:
        return f"RulesPlanner(base_ratio={self.base_ratio}, use_base={self.use_base})"

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult:
        """Plan ``prompt`` from its wording alone; raises PlannerError for images or blank text."""
        start = time.perf_counter()
        if image is not None:
            raise PlannerError(
                "the rules planner cannot read images; describe the layout in the prompt or use "
                "a planner backed by a vision-language model"
            )
        text = _norm(prompt) if isinstance(prompt, str) else ""
        if not text:
            raise PlannerError("the prompt is empty; give a description of the image to plan")
        try:
            plan, entities = self._plan(text)
        except (ValueError, ValidationError) as exc:  # a bug in the rules, reported as such
            raise PlannerError(f"the rules planner could not plan {text!r}: {exc}") from None
        return PlanResult(
            recaption=Recaption(original_prompt=prompt, recaption=text, entities=entities),
            plan=plan,
            raw="",
            planner=self.name,
            seconds=time.perf_counter() - start,
        )

    # ------------------------------------------------------------------ analysis

    def _plan(self, text: str) -> tuple[RegionPlan, list[Entity]]:
        body = text.rstrip(" .!;,")
        prefix, suffix, body = _take_style(body)
        found = _structure(body)
        if found is None:
            return RegionPlan.single(text), [_entity_of(_tidy(body) or text)]
        grid, lead, setting = found
        lead_core, lead_setting = _take_setting(lead, whole=True) if lead else ("", "")
        settings = [s for s in (lead_setting, setting) if s]
        context = " ".join(_lower_first(s) for s in settings)

        def compose(core: str) -> str:
            parts = [f"{prefix}{core}".strip()]
            if context:
                parts.append(context)
            prompt = " ".join(parts)
            return f"{prompt}, {suffix}" if suffix else prompt

        names = [seg for row in grid for seg in row]
        rows = [Row(regions=[Region(prompt=compose(seg)) for seg in row]) for row in grid]
        base = None
        if self.use_base:
            group = _join_names(names)
            base = compose(f"{lead_core}: {group}" if lead_core else group)
        plan = RegionPlan(rows=rows, base_prompt=base, base_ratio=self.base_ratio)
        return plan, [_entity_of(n) for n in names]


def _take_style(body: str) -> tuple[str, str, str]:
    """Split off a style prefix ("a photo of ") and style suffixes (", oil painting")."""
    suffixes = [m.group(0).strip(" ,") for m in _IN_STYLE_OF.finditer(body)]
    rest = _IN_STYLE_OF.sub("", body).strip()
    m = _STYLE_PREFIX.match(rest)
    prefix = ""
    if m and rest[m.end() :].strip():
        prefix, rest = m.group(0), rest[m.end() :]
    pieces = split_outside_brackets(rest, ",")
    tail: list[str] = []
    while len(pieces) > 1 and _STYLE_WORDS.search(pieces[-1]) and not _starts_entity(pieces[-1]):
        tail.insert(0, pieces.pop().strip())
    rest = ",".join(pieces).strip()
    if not rest:
        return "", "", body
    return prefix, ", ".join(t for t in tail + suffixes if t), rest


def _structure(body: str) -> tuple[list[list[str]], str, str] | None:
    """Rows of entity phrases, the leading context and the shared setting; None for no layout."""
    for finder in (_by_sequence, _by_markers, _by_relation, _by_and):
        found = finder(body)
        if found is None:
            continue
        grid, lead, setting = found
        grid = [row for row in ([_tidy(s) for s in row] for row in grid) if row]
        grid = [[s for s in row if s] for row in grid]
        grid = [row for row in grid if row]
        if sum(len(row) for row in grid) >= 2:
            return grid, _tidy(lead), setting
    return None


def _shared_setting(items: list[str]) -> tuple[list[str], str]:
    """Take the last item's trailing setting as shared, unless items carry their own."""
    if not items:
        return items, ""
    last, setting = _take_setting(items[-1])
    if not setting or any(_take_setting(i)[1] for i in items[:-1]):
        return items, ""
    return [*items[:-1], last], setting


def _by_sequence(body: str) -> tuple[list[list[str]], str, str] | None:
    """ "from left to right, A, B and C" (or right to left, top to bottom, bottom to top)."""
    m = _SEQUENCE.search(body)
    if m is None:
        return None
    a, b = m.group("a").lower(), m.group("b").lower()
    horizontal = {a, b} == {"left", "right"}
    if not horizontal and {a, b} != {"top", "bottom"}:
        return None
    lead, rest = body[: m.start()], body[m.end() :]
    if not _tidy(rest):
        lead, rest = "", lead
    items, setting = _shared_setting(_split_list(rest))
    if a in ("right", "bottom"):
        items.reverse()
    grid = [items] if horizontal else [[i] for i in items]
    return grid, lead, setting


_ROW = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_COL = {"left": 0, "right": 2}


def _by_markers(body: str) -> tuple[list[list[str]], str, str] | None:
    """ "on the left A, in the middle B, on the right C", "at the top A, at the bottom B"."""
    marks = list(_MARKER.finditer(body))
    if len(marks) < 2:
        return None
    places: list[tuple[int | None, int | None, bool]] = []  # row, col, is-middle
    for m in marks:
        if m.group("corner_v"):
            places.append(
                (_ROW[m.group("corner_v").lower()], _COL[m.group("corner_h").lower()], False)
            )
        else:
            pos = m.group("pos").lower()
            places.append((_ROW.get(pos), _COL.get(pos), pos not in _ROW and pos not in _COL))
    has_cols = any(c is not None for _, c, _ in places)
    has_rows = any(r is not None for r, _, _ in places)

    lead = body[: marks[0].start()]
    tail = body[marks[-1].end() :]
    postfix = bool(_tidy(lead)) and (not _tidy(tail) or bool(_SETTING.match(tail.strip(" ,"))))
    setting = ""
    if postfix:
        texts = [body[(marks[i - 1].end() if i else 0) : m.start()] for i, m in enumerate(marks)]
        setting = _take_setting(tail.strip(" ,"), whole=True)[1] if _tidy(tail) else ""
        lead = ""
    else:
        ends = [m.start() for m in marks[1:]] + [len(body)]
        texts, setting = _shared_setting(
            [body[m.end() : e] for m, e in zip(marks, ends, strict=True)]
        )

    segments: list[_Segment] = []
    current_row: int | None = None
    for (row, col, middle), seg_text in zip(places, texts, strict=True):
        if middle:
            row, col = (None, 1) if has_cols else (1, None)
        if row is not None:
            current_row = row
        if row is not None and col is None and has_cols and not _tidy(seg_text):
            continue  # "at the bottom, on the left A and on the right B": a row heading
        segments.append(_Segment(seg_text, row if row is not None else current_row, col))
    if has_rows and has_cols:
        segments = [_Segment(s.text, 1 if s.row is None else s.row, s.col) for s in segments]
    row_keys = sorted({s.row if s.row is not None else 0 for s in segments})
    grid: list[list[str]] = []
    for key in row_keys:
        in_row = [s for s in segments if (s.row if s.row is not None else 0) == key]
        if has_cols:
            in_row.sort(key=lambda s: 1 if s.col is None else s.col)  # stable: text order
            grid.append([s.text for s in in_row])
        else:
            grid.extend([s.text] for s in in_row)
    return grid, lead, setting


def _by_relation(body: str) -> tuple[list[list[str]], str, str] | None:
    """ "A next to B", "A beside B", "A to the left of B" (and to the right of)."""
    rels = list(_RELATION.finditer(body))
    if not rels:
        return None
    pieces = [body[: rels[0].start()]]
    pieces += [body[m.end() : n.start()] for m, n in itertools.pairwise(rels)]
    pieces.append(body[rels[-1].end() :])
    items, setting = _shared_setting([_tidy(p) for p in pieces])
    if len(rels) == 1 and (rels[0].group("side") or "").lower() == "right":
        items.reverse()  # "A to the right of B": B is on the left
    return [items], "", setting


def _by_and(body: str) -> tuple[list[list[str]], str, str] | None:
    """ "A and B" (or "A, B and C") when every part starts like a separate entity."""
    if not _starts_entity(body):
        return None
    pieces = [p.strip() for p in split_outside_brackets(body, ",") if p.strip()]
    if len(pieces) > 1 and not all(_starts_entity(p.removeprefix("and ")) for p in pieces):
        pieces = [body]  # commas belong to descriptions; only "and" can split
    items = [i for p in pieces for i in _split_and(p.removeprefix("and "))]
    if len(items) < 2:
        return None
    items, setting = _shared_setting([_tidy(i) for i in items])
    return [items], "", setting
