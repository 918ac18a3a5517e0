"""The RPG planning instruction and a tolerant parser of the replies it asks for.

Every text-speaking planner backend sends :data:`INSTRUCTIONS` (as a system message, or prepended
where a model has no system role) and :func:`build_user_message`, and turns the reply into a
validated plan with :func:`parse_reply`. Replies from small or reasoning models are messy, so the
parser looks for its labels line by line instead of demanding an exact layout, and raises
:class:`~rpg.errors.PlannerError` with a message a model can act on when a reply is unusable; that
message is what :func:`build_retry_message` sends back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from rpg.errors import PlannerError
from rpg.layout import parse_split_ratio, split_prompts
from rpg.models import Entity, Layer, PlanResult, Recaption, RegionPlan
from rpg.planners.boxes import BoxReply, read_boxes
from rpg.planners.reasoning import strip_reasoning

__all__ = [
    "EXAMPLES",
    "INSTRUCTIONS",
    "TEMPLATE_VERSION",
    "Example",
    "build_retry_message",
    "build_user_message",
    "parse_reply",
    "split_outside_brackets",
]

#: Bump whenever INSTRUCTIONS or the reply format changes: plan caches key on it.
TEMPLATE_VERSION = "2"


@dataclass(frozen=True)
class Example:
    """One in-context example: a caption and the reply the model should imitate."""

    caption: str
    reply: str


EXAMPLES: tuple[Example, ...] = (
    Example(
        caption="Two cats on a sunny windowsill, a fluffy white one and a sleek black one",
        reply="""\
Recaption: Two cats rest side by side on a sunny wooden windowsill: on the left a fluffy white \
long-haired cat with green eyes, on the right a sleek short-haired black cat with yellow eyes, \
warm afternoon light.
Key entities:
- white cat: fluffy, long-haired, green eyes
- black cat: sleek, short-haired, yellow eyes
Layout: one row, since the cats sit side by side; the white cat on the left half and the black \
cat on the right half. Both entities are cats, so a base prompt keeps them one coherent scene.
Final split ratio: 1,1
Base prompt used: yes
Regional Prompt: two cats resting side by side on a sunny wooden windowsill, warm afternoon \
light BREAK
a fluffy long-haired white cat with green eyes on a sunny wooden windowsill, warm afternoon \
light BREAK
a sleek short-haired black cat with yellow eyes on a sunny wooden windowsill, warm afternoon \
light""",
    ),
    Example(
        caption="A snowy mountain under a starry night sky, with a frozen lake below",
        reply="""\
Recaption: A quiet winter night: a sky full of stars and a faint green aurora above a \
snow-covered mountain peak, and at its foot a frozen lake that mirrors the starlight.
Key entities:
- night sky: starry, faint green aurora
- mountain: snow-covered peak
- lake: frozen, mirrors the starlight
Layout: three stacked rows from top to bottom, sky, mountain and lake; the sky gets the most \
height and the lake the least. Each row holds one region. The rows form one landscape, so a \
base prompt ties them together.
Final split ratio: 4;3;2
Base prompt used: yes
Regional Prompt: a quiet winter night landscape, a snowy mountain under a starry sky above a \
frozen lake BREAK
a deep night sky full of bright stars with a faint green aurora, winter night BREAK
a snow-covered mountain peak glowing softly in starlight, winter night BREAK
a frozen lake at the foot of a mountain reflecting the stars, smooth ice, winter night""",
    ),
    Example(
        caption="A kitchen: a shelf of glass jars and a window with potted herbs at the back, "
        "a chef slicing tomatoes and a bowl of lemons on the counter in front",
        reply="""\
Recaption: A bright home kitchen. At the back, a wooden shelf lined with glass jars of pasta \
and beans, and a window with small pots of basil and rosemary on its sill; in front, on the \
counter, a chef in a white jacket slicing red tomatoes, and a blue ceramic bowl full of lemons.
Key entities:
- shelf: wooden, lined with glass jars of pasta and beans
- window: potted basil and rosemary on the sill
- chef: white jacket, slicing red tomatoes
- bowl: blue ceramic, full of lemons
Layout: two rows. The top row is the back wall, split into the shelf on the left and the \
window on the right, equal widths. The bottom row is the counter and is taller; the chef takes \
two thirds on the left and the bowl one third on the right. The entities are all different \
kinds of things, so no base prompt.
Final split ratio: 1,1,1;1.5,2,1
Base prompt used: no
Regional Prompt: a wooden kitchen shelf lined with glass jars of pasta and beans, bright \
kitchen BREAK
a kitchen window with small pots of basil and rosemary on the sill, daylight BREAK
a chef in a white jacket slicing red tomatoes on a kitchen counter, bright kitchen BREAK
a blue ceramic bowl full of yellow lemons on a kitchen counter, bright kitchen""",
    ),
    Example(
        caption="A ginger cat asleep on a grey sofa, a small painting on the wall above it",
        reply="""\
Recaption: A cosy living room in warm evening lamp light: a grey fabric sofa with two plump \
cushions stands against a pale green wall, a ginger cat lies curled up asleep on its middle \
seat, and a small framed landscape painting hangs on the wall above.
Key entities:
- sofa: grey fabric, two plump cushions
- cat: ginger, curled up asleep
- painting: small, framed, a landscape
Layout: the cat lies on the sofa and the painting hangs on the wall with wall all around it, \
so rows and columns cannot hold them: use layers over the room as background. The sofa fills \
the lower half; the cat, drawn over the sofa, takes the middle of its seat; the painting sits \
high in the middle of the wall.
Layers (bottom to top; box = left, top, right, bottom as fractions of the canvas):
- [0.05, 0.50, 0.95, 0.95] a grey fabric sofa with two plump cushions, cosy living room, warm \
lamp light
- [0.30, 0.42, 0.70, 0.72] a ginger cat curled up asleep, cosy living room, warm lamp light
- [0.38, 0.08, 0.62, 0.32] a small framed landscape painting on a pale green wall, warm lamp \
light
Background prompt: a cosy living room with a pale green wall, warm evening lamp light""",
    ),
    Example(
        caption="A watercolor of a lighthouse at dusk",
        reply="""\
Recaption: A soft watercolor painting of a white and red striped lighthouse on a rocky shore \
at dusk, a pink and violet sky, gentle waves.
Key entities:
- lighthouse: white and red stripes, on a rocky shore
Layout: there is a single entity, so the whole canvas is one region and no base prompt is \
needed.
Final split ratio: 1
Base prompt used: no
Regional Prompt: a soft watercolor painting of a white and red striped lighthouse on a rocky \
shore at dusk, pink and violet sky, gentle waves""",
    ),
)


def _render_examples() -> str:
    parts = []
    for i, ex in enumerate(EXAMPLES, 1):
        parts.append(f"### Example {i}\nCaption: {ex.caption}\n\n{ex.reply}")
    return "\n\n".join(parts)


INSTRUCTIONS = f"""\
You plan images for a text-to-image model that can draw a different prompt in each region of \
the canvas. Given a caption, work through these steps and write each one down.

1. Recaption. Rewrite the caption as one richer description that keeps every entity and every \
attribute of the original and adds fitting detail (materials, colours, light). Start the line \
with "Recaption:".
2. Key entities. Under "Key entities:", list the main things to draw, one per line, as \
"- name: attribute, attribute". An attribute belongs to exactly one entity.
3. Layout. Under "Layout:", decide where every entity goes. The canvas is split into rows from \
top to bottom, and each row into regions from left to right; put one entity in each region. \
Give every row a relative height and every region a relative width within its row, sized to \
what it holds. Use a single region for the whole canvas when there is only one entity. When \
rows and columns cannot hold the picture (a thing lying on or inside another, or a thing in a \
corner or the middle with background all around it), use layers instead: give each entity a \
box, list the layers from the bottom one to the top one (a later layer is drawn over the \
earlier ones where they overlap), and describe the background that fills the rest.
4. Base prompt. When two or more entities belong to the same class (two girls, three cats) or \
the regions must read as one continuous scene, also write a base prompt that describes the \
whole image; it is blended into every region and keeps them consistent.
5. End your reply with exactly these three lines:
   Final split ratio: the layout as numbers. With a single row, write the region widths \
separated by commas, e.g. "1,1" for two equal halves or "1,2,1". With several rows, write the \
rows top to bottom separated by semicolons; each row is its height, then the widths of its \
regions, all separated by commas, e.g. "1,1,1;1,2,1" for two equal rows of two regions, the \
lower one split 2:1. A row with one number is \
one full-width region, e.g. "1;1" for two rows.
   Base prompt used: yes or no.
   Regional Prompt: the prompts separated by the word BREAK. When the base prompt is used it \
comes first; then one prompt per region in reading order (rows top to bottom, regions left to \
right). Each regional prompt describes its entity with all of that entity's attributes, plus \
the shared setting and style, and never mentions entities of other regions.
The number of regional prompts must equal the number of regions in the split ratio (plus one \
for the base prompt when it is used).
6. For layers, end instead with these lines (and no split ratio):
   Layers (bottom to top; box = left, top, right, bottom as fractions of the canvas):
   then one line per layer, "- [x0, y0, x1, y1] prompt", e.g. "- [0.60, 0.05, 0.95, 0.40] a \
bright yellow sun". The numbers are fractions of the canvas width and height from its top left \
corner (0 to 1, x0 < x1, y0 < y1). Each layer's prompt describes its entity as a regional \
prompt does.
   Background prompt: what fills the canvas around the layers; it is blended into every layer.

{_render_examples()}
"""


def build_user_message(prompt: str) -> str:
    """The user turn for one caption, reminding the model of the closing lines it must write."""
    return (
        f"Caption: {prompt.strip()}\n\n"
        "Plan this caption as in the examples. End with the lines 'Final split ratio:', "
        "'Base prompt used:' and 'Regional Prompt:' (or, for layers, with the 'Layers' lines "
        "and 'Background prompt:')."
    )


def build_retry_message(error: str) -> str:
    """The turn sent back to a model whose reply failed validation, quoting the problem."""
    return (
        f'Your reply could not be used: "{error.strip()}".\n'
        "Write the whole answer again in the same format and fix that problem. End with "
        "'Final split ratio:', 'Base prompt used: yes/no' and 'Regional Prompt:' with exactly "
        "one prompt per region, joined by BREAK (the base prompt first when it is used); or, "
        "for layers, with one '- [x0, y0, x1, y1] prompt' line per layer after 'Layers:' and "
        "a 'Background prompt:' line."
    )


# --------------------------------------------------------------------------- parsing

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
