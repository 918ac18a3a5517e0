"""Draw a region plan as a picture, so a plan can be checked by eye before spending GPU time."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

from rpg.models import RegionPlan

__all__ = ["draw_plan"]

_PALETTE = [
    (230, 97, 89),
    (80, 150, 220),
    (120, 190, 100),
    (240, 180, 60),
    (170, 110, 200),
    (70, 190, 190),
    (230, 130, 180),
    (150, 150, 150),
]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_plan(plan: RegionPlan, size: tuple[int, int] = (768, 768)) -> Image.Image:
    """Render ``plan`` as labelled rectangles on a ``size`` canvas, base prompt as a caption.

    Each region is tinted with its own colour and labelled with its number and prompt; a strip
    under the canvas shows the base prompt and ratio when the plan has one.
    """
    width, height = size
    if width < 16 or height < 16:
        raise ValueError(f"layout image size must be at least 16x16, got {width}x{height}")
    font_size = max(10, min(width, height) // 40)
    font = _font(font_size)
    caption_lines: list[str] = []
    if plan.base_prompt is not None:
        chars = max(10, int(width / (font_size * 0.55)))
        caption_lines = textwrap.wrap(
            f"base ({plan.base_ratio:g}): {plan.base_prompt}", width=chars
        )[:4]
    caption_h = (len(caption_lines) * (font_size + 4) + 12) if caption_lines else 0
    image = Image.new("RGB", (width, height + caption_h), "white")
    draw = ImageDraw.Draw(image)
    for i, ((x0, y0, x1, y1), region) in enumerate(zip(plan.boxes(), plan.regions, strict=True)):
        box = (round(x0 * width), round(y0 * height), round(x1 * width) - 1, round(y1 * height) - 1)
        color = _PALETTE[i % len(_PALETTE)]
        tint = tuple(255 - (255 - c) // 4 for c in color)
        draw.rectangle(box, fill=tint, outline=color, width=max(2, font_size // 5))
        box_w = box[2] - box[0]
        chars = max(6, int(box_w / (font_size * 0.55)) - 1)
        lines = textwrap.wrap(f"{i + 1}. {region.prompt}", width=chars)
        max_lines = max(1, (box[3] - box[1] - 8) // (font_size + 4))
        if len(lines) > max_lines:
            lines = [*lines[: max_lines - 1], lines[max_lines - 1][: chars - 1] + "…"]
        y = box[1] + 6
        for line in lines:
            draw.text((box[0] + 6, y), line, fill=(20, 20, 20), font=font)
            y += font_size + 4
    y = height + 6
    for line in caption_lines:
        draw.text((6, y), line, fill=(20, 20, 20), font=font)
        y += font_size + 4
    return image
