"""Reading box replies: a list of layers, each a prompt and a box, over a background prompt.

Two shapes are read, both as plain text around whatever else the model wrote:

* this project's own ``Layers:`` section (:data:`rpg.planners.template.INSTRUCTIONS` asks for
  it): one line per layer, bottom to top, ``- [x0, y0, x1, y1] prompt`` with the box's edges as
  fractions of the canvas;
* the replies of the LLM-grounded layout methods: ``(prompt, [x, y, width, height])`` tuples,
  in pixels or as fractions, often on one ``Objects: [...]`` line; later objects are drawn over
  earlier ones.

Either comes with a ``Background prompt:`` line, the base prompt that paints what no layer
covers. Pixel boxes need the canvas size: the one the reply states ("a 512x512 image"), else
the one the caller passes (the request's), else 512 × 512 — the size those methods' replies
use — when every box fits inside it. Anything else is a :class:`~rpg.errors.PlannerError` that
says what to fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from rpg.errors import PlannerError
from rpg.layout import Box

__all__ = ["DEFAULT_PIXEL_CANVAS", "BoxReply", "read_boxes"]

#: The canvas that pixel boxes refer to when neither the reply nor the caller gives one.
DEFAULT_PIXEL_CANVAS = (512, 512)
#: How far (as a fraction of the canvas) a box may overshoot an edge and be clipped to it:
#: models write 0 to 512 for a 512-pixel side, or round 0.999 up.
_OVERSHOOT = 0.02

_MARKUP = "*_`\"'“”‘’ "
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMS = re.compile(_NUMBER)
_LABEL_HEAD = r"^[ \t>#*_`•-]*(?:\d+[.)]\s*)?"
_BACKGROUND = re.compile(
    _LABEL_HEAD + r"(?:background|bg)(?:[\s_-]*prompt)?\b[ \t*_`]*[:=][ \t*_`]*(?P<value>.*)$",
    re.IGNORECASE,
)
_NEGATIVE = re.compile(_LABEL_HEAD + r"negative[\s_-]*prompt\b", re.IGNORECASE)
_LAYERS = re.compile(
    _LABEL_HEAD + r"(?:canvas[\s_-]+)?layers?\b(?:[^:\n]{0,120}:[ \t*_`]*(?P<value>.*)|"
    r"\s*(?:\([^)\n]*\))?[ \t*_`]*)$",  # or a heading alone: "## Layers (bottom to top)"
    re.IGNORECASE,
)
# "- [0.1, 0.2, 0.5, 0.9] a red kite" (box first), or "- a red kite: [0.1, 0.2, 0.5, 0.9]"
_BOX = r"\[\s*(?P<nums>[^\[\]]*?)\s*\]"
_ITEM = r"^\s*(?:[-*•+]|\d+[.)])?\s*"
_LAYER_BOX_FIRST = re.compile(rf"{_ITEM}[*_`]*{_BOX}[*_`]*\s*[:=–—-]?\s*(?P<prompt>.+)$")
_LAYER_BOX_LAST = re.compile(rf"{_ITEM}(?P<prompt>.+?)\s*[:=–—-]?\s*[*_`]*{_BOX}[*_`]*\s*$")
# ('a red kite', [10, 20, 100, 80]) with single, double or no quotes
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_TUPLE = re.compile(
    r"\(\s*(?P<prompt>\"[^\"]*\"|'(?:[^'\\]|\\.)*'|[^()\[\]'\"]+?)\s*,\s*"
    rf"{_BOX}\s*\)"
)
_SIZE = re.compile(
    r"(?P<w>\d{2,5})\s*(?:x|×|\*|by)\s*(?P<h>\d{2,5})(?:\s*(?:px|pixels?))?", re.IGNORECASE
)
_SIZE_WORDS = re.compile(r"\b(?:size|canvas|image|resolution|pixels?|px|frame)\b", re.IGNORECASE)


@dataclass(frozen=True)
class BoxReply:
    """Layers read from a reply: ``(prompt, box)`` bottom to top, boxes as canvas fractions."""

    layers: tuple[tuple[str, Box], ...]
    background: str | None
    #: Which shape was read: ``"layers"`` (this project's) or ``"objects"`` (x, y, w, h).
    shape: str


def _clean(text: str) -> str:
    text = text.strip().strip(_MARKUP).strip().rstrip(".,;").strip()
    return text.replace("\\'", "'")


def _background(lines: list[str]) -> str | None:
    """The last ``Background prompt:`` value (or the line after a bare label)."""
    found: str | None = None
    for i, line in enumerate(lines):
        m = _BACKGROUND.match(line)
        if m is None:
            continue
        value = _clean(m.group("value"))
        if not value and i + 1 < len(lines):
            value = _clean(lines[i + 1])
        found = None if value.lower() in ("", "none", "null", "n/a", "-") else value
    return found


def _stated_size(lines: list[str]) -> tuple[int, int] | None:
    """A canvas size the reply states on a line that talks about size ("a 768x512 image")."""
    for line in lines:
        m = _SIZE.search(line)
        if m is not None and _SIZE_WORDS.search(line) and not _TUPLE.search(line):
            return int(m.group("w")), int(m.group("h"))
    return None


def _numbers(text: str, prompt: str, raw: str, convention: str) -> tuple[float, ...]:
    nums = tuple(float(n) for n in _NUMS.findall(text))
    if len(nums) != 4 or not all(math.isfinite(n) for n in nums):
        raise PlannerError(
            f"the box of {prompt!r} has {len(nums)} number{'s' if len(nums) != 1 else ''} "
            f"([{text}]); give exactly four: {convention}",
            raw=raw,
        )
    return nums


def _our_layers(lines: list[str], raw: str) -> list[tuple[str, tuple[float, ...]]] | None:
    """The ``Layers:`` section's ``(prompt, [x0, y0, x1, y1])`` entries, or None without one."""
    start = None
    for i, line in enumerate(lines):
        if _LAYERS.match(line) and not _TUPLE.search(line):
            start = i  # the last section wins, as with the other labels
    if start is None:
        return None
    found: list[tuple[str, tuple[float, ...]]] = []
    inline = _LAYERS.match(lines[start])
    value = inline.group("value") if inline else None
    rest = [value] if value and value.strip() else []
    for line in [*rest, *lines[start + 1 :]]:
        if not line.strip():
            if found:
                break
            continue
        if _BACKGROUND.match(line) or _NEGATIVE.match(line):
            break
        m = _LAYER_BOX_FIRST.match(line) or _LAYER_BOX_LAST.match(line)
        if m is None:
            if found and line[:1].isspace() and not _BULLET.match(line):  # a wrapped prompt
                prompt, nums = found[-1]
                found[-1] = (f"{prompt} {_clean(line)}", nums)
                continue
            if found:
                break
            continue
        prompt = _clean(m.group("prompt"))
        convention = "[x0, y0, x1, y1], the left, top, right and bottom edges"
        found.append((prompt, _numbers(m.group("nums"), prompt, raw, convention)))
    return found


def _objects(body: str, raw: str, *, grid: bool) -> list[tuple[str, tuple[float, ...]]]:
    """Every ``(prompt, [x, y, w, h])`` tuple in the reply, in order.

    In a reply that also has a grid (``grid``), tuples count only when one holds four numbers:
    its reasoning may well write "(the left half, [1 of 2])", and that is no box.
    """
    found = list(_TUPLE.finditer(body))
    if grid and not any(len(_NUMS.findall(m.group("nums"))) == 4 for m in found):
        return []
    out = []
    for m in found:
        prompt = _clean(m.group("prompt"))
        convention = "[x, y, width, height]"
        out.append((prompt, _numbers(m.group("nums"), prompt, raw, convention)))
    return out


def _to_box(
    prompt: str,
    nums: tuple[float, ...],
    size: tuple[float, float],
    xywh: bool,
    raw: str,
    *,
    assumed: bool = False,
) -> Box:
    w, h = size
    a, b, c, d = nums
    x0, y0, x1, y1 = (a, b, a + c, b + d) if xywh else (a, b, c, d)
    box = [x0 / w, y0 / h, x1 / w, y1 / h]
    shown = "x, y, width, height" if xywh else "x0, y0, x1, y1"
    where = f"the {w:g}x{h:g} canvas" if size != (1.0, 1.0) else "the canvas (0 to 1)"
    if assumed:
        where += (
            " (assumed: the reply gives pixels but no canvas size; state it, e.g. 'Canvas: "
            "1024x768', or give the boxes as fractions of the canvas)"
        )
    if box[2] <= box[0] or box[3] <= box[1]:
        raise PlannerError(
            f"the box of {prompt!r} ([{shown}] = {list(nums)}) has no area; "
            + (
                "width and height must be positive"
                if xywh
                else "x1 must be greater than x0 and y1 greater than y0"
            ),
            raw=raw,
        )
    if any(v < -_OVERSHOOT or v > 1 + _OVERSHOOT for v in box):
        raise PlannerError(
            f"the box of {prompt!r} ([{shown}] = {list(nums)}) lies outside {where}; keep every "
            "box inside the canvas",
            raw=raw,
        )
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in box)
    return (x0, y0, x1, y1)


def read_boxes(
    body: str,
    lines: list[str],
    *,
    raw: str,
    size: tuple[int, int] | None = None,
    grid: bool = False,
) -> BoxReply | None:
    """The layers of a box reply, or ``None`` when the reply holds no boxes at all.

    ``body`` is the reply without reasoning, ``lines`` its lines without code fences, ``raw``
    the reply as received (carried by every error), ``size`` the request's canvas ``(width,
    height)`` in pixels when known; ``grid`` says the reply also has a split ratio.
    """
    ours = _our_layers(lines, raw)
    if ours:
        entries, xywh, shape = ours, False, "layers"
    else:
        entries, xywh, shape = _objects(body, raw, grid=grid), True, "objects"
    if not entries:
        if ours is not None:
            raise PlannerError(
                "the 'Layers:' section has no layers; write one line per layer, bottom to top, "
                "as '- [x0, y0, x1, y1] prompt' with the box as fractions of the canvas",
                raw=raw,
            )
        return None
    for i, (prompt, _) in enumerate(entries):
        if not prompt:
            raise PlannerError(
                f"layer {i + 1} of {len(entries)} has an empty prompt; every layer needs one",
                raw=raw,
            )
    values = [v for _, nums in entries for v in nums]
    canvas: tuple[float, float] = (1.0, 1.0)
    assumed = False
    if max(values) > 1 + _OVERSHOOT:  # pixels
        stated = _stated_size(lines) or size
        assumed = stated is None
        width, height = DEFAULT_PIXEL_CANVAS if stated is None else stated
        canvas = (float(width), float(height))
    layers = tuple((p, _to_box(p, nums, canvas, xywh, raw, assumed=assumed)) for p, nums in entries)
    return BoxReply(layers=layers, background=_background(lines), shape=shape)
