"""A tolerant parser of the replies :data:`rpg.planners.template.INSTRUCTIONS` asks for.

Replies from small or reasoning models are messy, so :func:`parse_reply` looks for its labels
line by line instead of demanding an exact layout, and raises :class:`~rpg.errors.PlannerError`
with a message a model can act on when a reply is unusable (what
:func:`rpg.planners.template.build_retry_message` sends back). The instruction and the parser
are two modules because one is prose for the model and the other code for its answer;
:mod:`rpg.planners.template` re-exports the parser.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from rpg.errors import PlannerError
from rpg.layout import parse_split_ratio, split_prompts
from rpg.models import Entity, Layer, PlanResult, Recaption, RegionPlan
from rpg.planners.boxes import BoxReply, read_boxes
from rpg.planners.reasoning import strip_reasoning

__all__ = ["parse_reply", "split_outside_brackets"]

_SEP = r"[\s_-]*"
_LABELS: dict[str, str] = {
    "ratio": rf"final{_SEP}split{_SEP}ratios?|split{_SEP}ratios?",
    "prompts": rf"regional{_SEP}prompts?",
    "base": rf"base{_SEP}prompts?{_SEP}used|use{_SEP}base{_SEP}prompts?",
    "recaption": r"re[\s_-]*captions?",
    "entities": rf"key{_SEP}entit(?:y|ies)|entities",
    "layout": r"layout(?:\s+plan)?|plan|reasoning",
}
_LABEL_RES = {
    key: re.compile(
        r"^[ \t>#*_`•-]*(?:\d+[.)]\s*)?(?:" + pat + r")\b[ \t*_`]*(?P<sep>[:=])?[ \t*_`]*"
        r"(?P<value>.*)$",
        re.IGNORECASE,
    )
    for key, pat in _LABELS.items()
}
_FENCE = re.compile(r"^\s*(?:```|~~~).*$")
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_RATIO = re.compile(r"^(?:[\d.,;\s+]|-(?=\d))+")
_MARKUP = "*_`\"'“”‘’"


def _label_of(line: str) -> tuple[str, str] | None:
    """``(key, value)`` when the line starts with a known label (markdown allowed), else None."""
    for key, rx in _LABEL_RES.items():
        m = rx.match(line)
        if m is None:
            continue
        value = m.group("value").strip()
        # A label needs a colon, unless it stands alone on its line (a heading).
        if m.group("sep") or not value:
            return key, value
    return None


def _clean(piece: str) -> str:
    return piece.strip().strip(_MARKUP).strip().rstrip(".,;").strip()


def _prompt_count(lines: list[str]) -> int:
    return len(split_prompts(" ".join(lines))) if lines else 0


def _section(lines: list[str], start: int, value: str, *, expected: int = 0) -> list[str]:
    """The lines of a section: its inline value and the lines after it.

    The section ends at another label, or at a blank line unless the previous line ends with
    ``BREAK``; with ``expected`` set (a prompt block), a line also joins when the prompts so far
    are fewer than expected (a prompt wrapped over lines), or it touches a ``BREAK``.
    """
    out = [value] if value else []
    for line in lines[start + 1 :]:
        stripped = _BULLET.sub("", line).strip()
        if _label_of(line) is not None:
            break
        prev_break = bool(out) and out[-1].rstrip(_MARKUP + " ").endswith("BREAK")
        if not stripped:
            if out and not prev_break:
                break
            continue
        if out and expected:
            starts_break = stripped.lstrip(_MARKUP + " ").startswith("BREAK")
            if not (prev_break or starts_break or _prompt_count(out) < expected):
                break
        out.append(stripped)
    return out


def _parse_entities(items: list[str]) -> list[Entity]:
    if len(items) == 1:  # an inline list: "Key entities: girl (braid); man (blonde hair)"
        line = items[0]
        if ";" in line:
            items = line.split(";")
        elif ":" not in line:
            items = split_outside_brackets(line, ",")
    entities = []
    for item in items:
        item = item.strip().strip(_MARKUP).strip()
        name, attrs = item, ""
        m = re.match(r"^(?P<name>[^:(]+?)\s*(?:[:(]|\s[-–—]\s)\s*(?P<attrs>.*?)\)?\s*$", item)
        if m:
            name, attrs = m.group("name"), m.group("attrs")
        name = _clean(name)
        if not name:
            continue
        attributes = [a for a in (_clean(x) for x in re.split(r"[,;]", attrs)) if a]
        entities.append(Entity(name=name, attributes=attributes))
    return entities


def split_outside_brackets(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where it stands outside ``()``, ``[]`` and ``{}``."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _yes_no(value: str) -> bool | None:
    words = _clean(value).lower().split()
    word = words[0].strip(".,;:!") if words else ""
    if word in {"yes", "y", "true", "1"}:
        return True
    if word in {"no", "n", "false", "0", "none"}:
        return False
    return None


def _fail(message: str, raw: str) -> PlannerError:
    return PlannerError(message, raw=raw)


def parse_reply(
    text: str, *, prompt: str, planner: str = "", size: tuple[int, int] | None = None
) -> PlanResult:
    """Turn a model's free-form reply into a validated :class:`~rpg.models.PlanResult`.

    A reply with a split ratio and regional prompts gives a grid plan; a reply with boxes (a
    ``Layers:`` section, or ``(prompt, [x, y, w, h])`` objects as the LLM-grounded layout
    methods print them, see :mod:`rpg.planners.boxes`) and a background prompt gives a canvas
    plan. ``size`` is the request's canvas ``(width, height)``, for boxes given in pixels.

    Raises :class:`~rpg.errors.PlannerError` (with ``raw=text``) naming what is missing or
    inconsistent; it never falls back to a default plan.
    """
    if not isinstance(text, str) or not text.strip():
        raise _fail(
            "the reply is empty; expected 'Final split ratio:' and 'Regional Prompt:' lines",
            "" if not isinstance(text, str) else text,
        )
    body = strip_reasoning(text)
    lines = [line for line in body.splitlines() if not _FENCE.match(line)]

    found: dict[str, tuple[int, str]] = {}
    for i, line in enumerate(lines):
        hit = _label_of(line)
        if hit is not None:
            found[hit[0]] = (i, hit[1])  # the last occurrence wins

    boxes = read_boxes("\n".join(lines), lines, raw=text, size=size, grid="ratio" in found)
    if boxes is not None:
        if "ratio" in found:
            raise _fail(
                "the reply has both a split ratio and boxes; answer with one layout: either "
                "'Final split ratio:' with 'Regional Prompt:', or 'Layers:' with 'Background "
                "prompt:'",
                text,
            )
        return _canvas_result(boxes, lines, found, prompt=prompt, planner=planner, raw=text)
    if "ratio" not in found:
        raise _fail(
            "the reply has no 'Final split ratio:' line; end the reply with it, e.g. "
            "'Final split ratio: 1,1' (or, for layers, with a 'Layers:' section and a "
            "'Background prompt:' line)",
            text,
        )
    if "prompts" not in found:
        raise _fail(
            "the reply has no 'Regional Prompt:' line; end the reply with the prompts joined "
            "by BREAK",
            text,
        )

    # The split ratio: the label's value, or the first line after a heading.
    idx, value = found["ratio"]
    ratio_lines = _section(lines, idx, value)
    ratio_text = ratio_lines[0] if ratio_lines else ""
    match = _RATIO.match(ratio_text.replace("`", "").replace("*", "").strip(_MARKUP + " "))
    ratio = match.group(0).strip().rstrip(".,; ").strip() if match else ""
    if not ratio:
        raise _fail(
            f"the 'Final split ratio:' line has no ratio (got {ratio_text!r}); write numbers "
            "such as '1,1' or '1,1,1;1,2,1'",
            text,
        )
    try:
        rows = parse_split_ratio(ratio)
    except ValueError as exc:
        raise _fail(f"bad final split ratio: {exc}", text) from None
    n_regions = sum(len(widths) for _, widths in rows)

    use_base: bool | None = None
    if "base" in found:
        use_base = _yes_no(found["base"][1])

    idx, value = found["prompts"]
    expected = n_regions + (1 if use_base else 0)
    block = _section(lines, idx, value, expected=expected)
    if not block:
        raise _fail("the 'Regional Prompt:' line has no prompts; join them with BREAK", text)
    prompts = [_clean(p) for p in split_prompts(" ".join(block))]

    if use_base is None:  # no usable "Base prompt used:" line: infer from the count
        use_base = len(prompts) == n_regions + 1
    expected = n_regions + (1 if use_base else 0)
    if len(prompts) != expected:
        s = "s" if n_regions != 1 else ""
        base_note = "plus the base prompt first" if use_base else "and 'Base prompt used: no'"
        raise _fail(
            f"the split ratio {ratio!r} has {n_regions} region{s} but {len(prompts)} prompt"
            f"{'s were' if len(prompts) != 1 else ' was'} given; expected {expected} "
            f"({n_regions} regional prompt{s} {base_note}), joined by BREAK",
            text,
        )
    if use_base and not prompts[0]:
        raise _fail("the base prompt (the first prompt, before the first BREAK) is empty", text)
    regional = prompts[1:] if use_base else prompts
    for i, p in enumerate(regional):
        if not p:
            raise _fail(
                f"regional prompt {i + 1} of {len(regional)} is empty; every region needs a prompt",
                text,
            )

    try:
        plan = RegionPlan.from_split_ratio(
            ratio, regional, base_prompt=prompts[0] if use_base else None
        )
    except (ValueError, ValidationError) as exc:  # SplitRatioError is a ValueError
        raise _fail(f"invalid plan: {exc}", text) from None

    return PlanResult(
        recaption=_recaption(lines, found, prompt),
        plan=plan,
        raw=text,
        planner=planner,
    )


def _recaption(lines: list[str], found: dict[str, tuple[int, str]], prompt: str) -> Recaption:
    """The reply's recaption and key entities (the prompt and none when it has no such lines)."""
    recaption = prompt
    if "recaption" in found:
        idx, value = found["recaption"]
        recaption = _clean(" ".join(_section(lines, idx, value))) or prompt
    entities: list[Entity] = []
    if "entities" in found:
        idx, value = found["entities"]
        entities = _parse_entities(_section(lines, idx, value))
    return Recaption(original_prompt=prompt, recaption=recaption, entities=entities)


def _canvas_result(
    boxes: BoxReply,
    lines: list[str],
    found: dict[str, tuple[int, str]],
    *,
    prompt: str,
    planner: str,
    raw: str,
) -> PlanResult:
    """A canvas plan from the boxes of a reply: its layers over its background prompt."""
    try:
        plan = RegionPlan(
            layers=[Layer(prompt=p, box=box) for p, box in boxes.layers],
            base_prompt=boxes.background,
        )
    except (ValueError, ValidationError) as exc:
        raise _fail(f"invalid plan: {exc}", raw) from None
    return PlanResult(
        recaption=_recaption(lines, found, prompt), plan=plan, raw=raw, planner=planner
    )
