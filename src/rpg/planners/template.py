"""The RPG planning instruction, and (from :mod:`rpg.planners.text_reply`) a tolerant parser of the
replies it asks for.

Every text-speaking planner backend sends :data:`INSTRUCTIONS` (as a system message, or prepended
where a model has no system role) and :func:`build_user_message`, and turns the reply into a
validated plan with :func:`parse_reply`. Replies from small or reasoning models are messy, so the
parser looks for its labels line by line instead of demanding an exact layout, and raises
:class:`~rpg.errors.PlannerError` with a message a model can act on when a reply is unusable; that
message is what :func:`build_retry_message` sends back.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpg.planners.reasoning import strip_reasoning as strip_reasoning
from rpg.planners.text_reply import parse_reply, split_outside_brackets

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
