"""Reading phrases: style words, shared settings, entity lists and single entities.

These helpers know English noun phrases only as far as the layout rules need: where one entity
phrase ends and the next begins, which trailing words are a setting every entity shares, and
whether a piece of text is a whole entity phrase or a fragment that must not become a region.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rpg.models import Entity
from rpg.planners.rules.lexicon import (
    ADJECTIVES,
    ATTRIBUTES,
    COLOURS,
    COMPOUND_NOUNS,
    DETERMINERS,
    GROUP_VERBS,
    ING_NOUNS,
    OWN_VERBS,
    POSSESSIVES,
    STYLE_NOUNS,
    STYLE_WORDS,
    VERB_FORMS,
    WORN,
    wordset,
)
from rpg.planners.text_reply import split_outside_brackets

POSITION_WORDS = r"left|right|middle|center|centre|top|bottom|foreground|background"
_ING_NOUNS = "(?:" + "|".join(n.replace(" ", r"\s+") for n in ING_NOUNS) + r")(?:e?s)?"
_ING_NOUN = re.compile(rf"^(?:{_ING_NOUNS})\b", re.IGNORECASE)
#: A participle that says where or how the whole group is ("standing", "grazing", "playing
#: chess"): it may open a shared setting. Attribute verbs ("wearing") never do.
_PARTICIPLE_WORDS = (
    rf"(?!(?:wearing|holding|carrying|having|{_ING_NOUNS})\b)"
    r"[a-z]+ing(?:\s+[a-z]+){0,2}?"
)
_PARTICIPLE = _PARTICIPLE_WORDS + r"\s+"
_SETTING_PREP = (
    r"on|in|at|inside|against|atop|among|amid|across|along|around|through|outside|"
    r"under|underneath|beneath|near|by|in\s+front\s+of|behind|on\s+top\s+of|over"
)
# A trailing setting: "on a wooden table", ", in a park", "grazing in a meadow".
_SETTING = re.compile(
    rf"(?:^|,\s*|\s)(?P<phrase>(?:{_PARTICIPLE})?(?:{_SETTING_PREP})\s+"
    rf"(?!(?:the\s+)?(?:far\s+)?(?:{POSITION_WORDS})\b)"
    r"(?:a|an|the|some|his|her|their|sunset|sunrise|dawn|dusk|night|noon|twilight|midnight)\b.*)$",
    re.IGNORECASE,
)
_PARTICIPLE_CLAUSE = re.compile(rf"^{_PARTICIPLE_WORDS}\b", re.IGNORECASE)
_STYLE_PREFIX = re.compile(
    r"^(?:(?:an?|the)\s+)?(?:(?!(?:with|holding|and|of|in|on|at)\b)[\w-]+\s+){0,2}?"
    rf"(?:{STYLE_NOUNS})\s+of\s+",
    re.IGNORECASE,
)
_STYLE_WORDS = re.compile(rf"\b(?:{STYLE_WORDS})\b", re.IGNORECASE)
_IN_STYLE_OF = re.compile(r",?\s*\bin\s+the\s+style\s+of\s+[^,]+", re.IGNORECASE)
_OWN_CLAUSE = re.compile(rf"\s(?:{'|'.join(sorted(OWN_VERBS))})\s")
# "…, both sleeping on a sofa": the clause is about every entity.
_GROUP_WORD = re.compile(r"^(?:both|all(?:\s+of\s+them)?|together)\s+", re.IGNORECASE)
_LEADING_FILLER = re.compile(
    r"^(?:(?:and|while|with|whereas|then|also)\b\s*)*"
    r"(?:(?:there\s+(?:is|are|stands|sits)|we\s+see|you\s+see|is|are|stands|sits|lies)\b\s*)?",
    re.IGNORECASE,
)
_TRAILING_FILLER = re.compile(
    r"(?:\s+(?:and|while|is|are|was|were|stands|sits|lies|standing|sitting|placed|positioned|located|"
    r"lying|that\s+is|which\s+is|who\s+is))+$",
    re.IGNORECASE,
)
# Words that cannot open or close a region prompt: a piece that does is a fragment of a clause.
_BAD_FIRST = wordset(
    "and or but of to with by from for than as is are was were be been wears has have holds "
    "while whereas which who that whose then also"
) | frozenset(VERB_FORMS)
_BAD_LAST = (
    wordset(
        "and or but of to with by from for than as on in at into the a an is are was were who "
        "which that whose while whereas"
    )
    | DETERMINERS
    | POSSESSIVES
    | frozenset(VERB_FORMS)
)


def norm(text: str) -> str:
    """Collapse runs of whitespace to single spaces."""
    return " ".join(text.split())


def tidy(text: str) -> str:
    """Strip separators and filler words that join clauses but belong to no entity."""
    prev = None
    text = text.strip()
    while prev != text:
        prev = text
        text = text.strip(" ,;:.!-")
        text = _LEADING_FILLER.sub("", text)
        text = _TRAILING_FILLER.sub("", text)
    return text


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (hyphenated words stay whole)."""
    return re.findall(r"[\w'-]+", text.lower())


def starts_entity(text: str, *, strict: bool = False) -> bool:
    """Whether ``text`` opens like a new entity: "a …", "two …", "3 …", or (not ``strict``)
    "red …". After a comma only the strict form counts: "a big, brown bowl" is one bowl."""
    first = words(text)[:1]
    return bool(first) and (
        first[0] in DETERMINERS or first[0].isdigit() or (not strict and first[0] in ATTRIBUTES)
    )


def head_is_worn(text: str) -> bool:
    """Whether a phrase such as "a red scarf" or "black pants resting" names something worn or a
    body feature; "a blue hair drier" is a thing of its own."""
    found = words(text.split(",")[0])
    while found and (found[0] in DETERMINERS or found[0] in ATTRIBUTES or found[0].isdigit()):
        found = found[1:]
    if _COMPOUND.match(" ".join(found)):
        return False
    return any(w in WORN or singular(w) in WORN for w in found[:3])


def split_and(piece: str, *, listing: bool = False) -> list[str]:
    """Split "A and B" where B starts like a new entity ("and a dog", not "and blue eyes").

    ``listing=True`` (inside "from left to right, …") also splits before a bare noun.
    """
    parts = re.split(r"\s+and\s+", piece)
    out = [parts[0]]
    for part in parts[1:]:
        # "a black and white cat": "and" joins two colours of one entity
        joins_adjectives = bool(
            set(words(out[-1])[-1:]) & COLOURS and set(words(part)[:1]) & COLOURS
        )
        # "a girl with a hat and a scarf": worn things continue the owner's description
        worn = head_is_worn(part) and _OWN_CLAUSE.search(out[-1]) is not None
        opens = starts_entity(part) or (listing and _is_bare_noun_start(part))
        if opens and not worn and not joins_adjectives:
            out.append(part)
        else:
            out[-1] = f"{out[-1]} and {part}"
    return out


def _is_bare_noun_start(text: str) -> bool:
    """ "horse" or "fire truck" may open an entity in a list; "sleeping" or "with" do not."""
    first = words(text)[:1]
    return (
        bool(first)
        and first[0] not in _BAD_FIRST
        and (not first[0].endswith("ing") or _ING_NOUN.match(text.strip()) is not None)
    )


def _only_adjectives(text: str) -> bool:
    """ "a big" or "the white": a phrase cut off before its noun by a comma."""
    found = [w for w in words(text) if w not in DETERMINERS]
    return bool(found) and all(w in ADJECTIVES for w in found)


def split_list(text: str, *, listing: bool = False) -> list[str]:
    """Split "A, B and C" into entities; pieces that do not start like an entity stay attached
    (``listing=True``: every comma-separated piece is an entity)."""
    items: list[str] = []
    for piece in split_outside_brackets(text, ","):
        piece = piece.strip()
        if not piece:
            continue
        if piece.lower().startswith("and "):
            piece = piece[4:]
        sub = split_and(piece, listing=listing)
        # "a purple square, a green star": an article opens an entity even after a phrase of
        # words that can all be adjectives ("square"); "a big, brown bowl" stays one bowl
        strong = starts_entity(sub[0], strict=True)
        opens = strong or (listing and _is_bare_noun_start(sub[0]))
        if items and (not opens or (not strong and _only_adjectives(items[-1]))):
            items[-1] = f"{items[-1]}, {sub[0]}"
            sub = sub[1:]
        items.extend(sub)
    return [t for t in (tidy(i) for i in items) if t]


def take_setting(text: str, *, whole: bool = False) -> tuple[str, str]:
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
        word_before = set(words(entity)[-1:])
        describes = first_word.endswith("ing") and word_before & (DETERMINERS | ATTRIBUTES)
        if (
            (not entity and not whole)
            or (first_word == "in" and head_is_worn(phrase))
            or describes  # "a pink dining table in a park": the -ing word is no participle
        ):
            search_from = m.start("phrase") + 1
            continue
        return entity, tidy(phrase)


def is_setting(text: str) -> bool:
    """Whether ``text`` is nothing but a setting: "in a park", "grazing in a meadow"."""
    text = text.strip(" ,")
    rest, setting = take_setting(text, whole=True)
    return (bool(setting) and not rest) or bool(_PARTICIPLE_CLAUSE.match(text))


def shared_setting(items: list[str]) -> tuple[list[str], str]:
    """Take the last item's trailing setting as shared, unless items carry their own."""
    if not items:
        return items, ""
    last, setting = take_setting(items[-1])
    if not setting or any(take_setting(i)[1] for i in items[:-1]):
        return items, ""
    verb = re.search(r"\s(\w+)$", last)  # "a cup and a plate sit on a tray": the group sits
    if verb and verb.group(1).lower() in GROUP_VERBS and len(items) > 1:
        last, setting = last[: verb.start()], f"{GROUP_VERBS[verb.group(1).lower()]} {setting}"
    return [*items[:-1], last], setting


@dataclass(frozen=True)
class Frame:
    """What every region shares: a style prefix, leading and trailing context, style suffix."""

    prefix: str = ""
    context: str = ""
    suffix: str = ""

    def compose(self, core: str) -> str:
        """``core`` dressed in the shared words: "a photo of {core} in a park, oil painting"."""
        prompt = f"{self.prefix}{core}".strip()
        if self.context:
            sep = ", " if _PARTICIPLE_CLAUSE.match(self.context) else " "
            prompt = f"{prompt}{sep}{self.context}"
        return f"{prompt}, {self.suffix}" if self.suffix else prompt

    def with_context(self, *contexts: str) -> Frame:
        """A copy with more context words (empty ones are skipped)."""
        found = [lower_first(c) for c in (self.context, *contexts) if c]
        return Frame(self.prefix, " ".join(dict.fromkeys(found)), self.suffix)


def take_style(body: str) -> tuple[Frame, str]:
    """Split off a style prefix ("a photo of "), style suffixes (", oil painting") and shared
    clauses at either end (", grazing in a meadow", "In a kitchen, …")."""
    suffixes = [m.group(0).strip(" ,") for m in _IN_STYLE_OF.finditer(body)]
    rest = _IN_STYLE_OF.sub("", body).strip()
    m = _STYLE_PREFIX.match(rest)
    prefix = ""
    if m and rest[m.end() :].strip():
        prefix, rest = m.group(0), rest[m.end() :]
    pieces = split_outside_brackets(rest, ",")
    tail: list[str] = []
    while len(pieces) > 1 and _STYLE_WORDS.search(pieces[-1]) and not starts_entity(pieces[-1]):
        tail.insert(0, pieces.pop().strip())
    context: list[str] = []
    while len(pieces) > 1 and is_setting(_GROUP_WORD.sub("", pieces[-1].strip())):
        context.insert(0, tidy(_GROUP_WORD.sub("", pieces.pop().strip())))
    lead = re.match(r"^\s*(?P<lead>[^,:;]+)[,:;]\s*(?P<rest>.+)$", ",".join(pieces))
    if lead and is_setting(lead.group("lead")) and not _PARTICIPLE_CLAUSE.match(lead["lead"]):
        context.insert(0, tidy(lead.group("lead")))
        pieces = [lead.group("rest")]
    rest = ",".join(pieces).strip()
    if not rest:
        return Frame(), body
    return Frame(prefix, "", ", ".join(t for t in tail + suffixes if t)).with_context(
        *context
    ), rest


def lower_first(text: str) -> str:
    """ "In a cafe" -> "in a cafe", but keep acronyms ("NYC")."""
    return text if text[:2].isupper() else text[:1].lower() + text[1:]


def indefinite(noun_phrase: str) -> str:
    """ "the boy" -> "a boy", "the old man" -> "an old man"; other phrases unchanged."""
    m = re.match(r"^(?:the|one)\s+(?P<rest>.+)$", noun_phrase, re.IGNORECASE)
    if m is None:
        return noun_phrase
    rest = m.group("rest")
    return f"{'an' if rest[:1].lower() in 'aeiou' else 'a'} {rest}"


def as_description(predicate: str) -> str:
    """The words after a positioned noun, made to describe it: "wears a cap" -> "wearing a
    cap", "is tall" -> "who is tall", "reads a book" -> "reading a book"."""
    first, _, rest = predicate.strip().partition(" ")
    low = first.lower()
    if low in VERB_FORMS:
        return f"{VERB_FORMS[low]} {rest}".strip()
    if low in ("is", "are") and rest:
        nxt = rest.split(maxsplit=1)[0].lower()
        return rest if nxt.endswith("ing") or nxt in ("in", "with") else f"who {low} {rest}"
    if re.fullmatch(r"[a-z]+[^s]s", low) and rest:
        return f"who {predicate.strip()}"
    return predicate.strip()


def head_noun(text: str) -> str:
    """The noun an entity phrase is about: "two fluffy teddy bears with hats" -> "teddy bears"."""
    core = _HEAD_END.split(text.lower(), maxsplit=1)[0]
    compound = _COMPOUND.search(core)
    if compound:
        return compound.group(0)
    found = words(core)
    return found[-1] if found else ""


_HEAD_END = re.compile(
    r"\s+(?:with|wearing|holding|carrying|in|on|at|who|that|having|of|from|under|near|by|"
    rf"(?!(?:{_ING_NOUNS})\b)[a-z]+ing)(?:\s+|$)"  # "a kite flying", not "a dining table"
)
_COMPOUND = re.compile(
    r"\b(?:" + "|".join(c.replace(" ", r"\s+") + r"(?:e?s)?" for c in COMPOUND_NOUNS) + r")\b"
)


def singular(noun: str) -> str:
    """A rough singular for matching plural group words to their members ("boys" -> "boy")."""
    for plural, single in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x")):
        if noun.endswith(plural):
            return noun[: -len(plural)] + single
    return noun[:-1] if noun.endswith("s") and not noun.endswith("ss") else noun


def is_entity_phrase(text: str) -> bool:
    """Whether ``text`` can stand as a region prompt: a whole phrase, not a clause fragment
    such as "wears a green cap and the boy"."""
    found = words(text)
    if not found or len(found) > 30:
        return False
    if found[0] in _BAD_FIRST or found[-1] in _BAD_LAST:
        return False
    return any(w not in DETERMINERS and w not in _BAD_FIRST for w in found)


def entity_of(text: str) -> Entity:
    """Name and attributes of an entity phrase: "a girl with red hair and a hat"."""
    own = "|".join(sorted(OWN_VERBS))
    m = re.match(rf"^(?P<name>.+?)\s+(?:{own})\s+(?P<rest>.+)$", text)
    name, rest = (m.group("name"), m.group("rest")) if m else (text, "")
    name = re.sub(r"^(?:a|an|the)\s+", "", name, flags=re.IGNORECASE).strip() or text
    attributes = [a.strip() for a in re.split(r",|\s+and\s+", rest) if a.strip()]
    return Entity(name=name, attributes=attributes)
