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
    under the canvas shows the base prompt and ratio when the plan has one. A canvas plan shows
    its layers bottom to top (number 1 at the bottom) over a grey background, masks tinted by
    their coverage, with the background's prompt in the strip.
    """
    width, height = size
    if width < 16 or height < 16:
        raise ValueError(f"layout image size must be at least 16x16, got {width}x{height}")
    font_size = max(10, min(width, height) // 40)
    font = _font(font_size)
    caption_lines: list[str] = []
    if plan.base_prompt is not None:
        chars = max(10, int(width / (font_size * 0.55)))
        what = "base and background" if plan.is_canvas else "base"
        caption_lines = textwrap.wrap(
            f"{what} ({plan.base_ratio:g}): {plan.base_prompt}", width=chars
        )[:4]
    if plan.is_canvas and not caption_lines:
        caption_lines = ["background: the whole prompt (no base prompt)"]
    caption_h = (len(caption_lines) * (font_size + 4) + 12) if caption_lines else 0
    image = Image.new("RGB", (width, height + caption_h), "white")
    draw = ImageDraw.Draw(image)
    if plan.is_canvas:
        _draw_layers(image, plan, width, height, font, font_size)
    for i, ((x0, y0, x1, y1), region) in enumerate(
        zip([] if plan.is_canvas else plan.boxes(), plan.regions, strict=False)
    ):
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
    if plan.is_canvas and plan.base_prompt is not None:
        caption_lines = [
            line.replace("base (", "base and background (", 1) for line in caption_lines
        ]
    for line in caption_lines:
        draw.text((6, y), line, fill=(20, 20, 20), font=font)
        y += font_size + 4
    return image


def _draw_layers(
    image: Image.Image,
    plan: RegionPlan,
    width: int,
    height: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    font_size: int,
) -> None:
    """Layers bottom to top over a grey background, composited as the attention composites
    them: each is a light tint of its colour with its coverage as opacity (a box covers what
    is below; a mask shows its soft edges and translucency), boxes outlined, and labelled at
    the top left with the number (1 = bottom), shape and prompt."""
    import numpy as np

    canvas = Image.new("RGBA", (width, height), (236, 236, 236, 255))
    stroke = max(2, font_size // 5)
    for i, layer in enumerate(plan.layers):
        color = _PALETTE[i % len(_PALETTE)]
        light = tuple(255 - (255 - c) * 2 // 5 for c in color)
        if layer.mask is not None:
            # the coverage the attention sees, at a readable resolution
            cover = layer.mask.coverage(min(height, 256), min(width, 256))
            alpha = Image.fromarray(np.rint(cover * 255).astype(np.uint8), mode="L")
            alpha = alpha.resize((width, height), Image.Resampling.BILINEAR)
            tint = Image.new("RGBA", (width, height), (*light, 255))
            tint.putalpha(alpha)
            canvas = Image.alpha_composite(canvas, tint)
        else:
            overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
            x0, y0, x1, y1 = layer.bounding_box
            box = (round(x0 * width), round(y0 * height), round(x1 * width) - 1,
                   round(y1 * height) - 1)  # fmt: skip
            ImageDraw.Draw(overlay).rectangle(
                box, fill=(*light, 255), outline=(*color, 255), width=stroke
            )
            canvas = Image.alpha_composite(canvas, overlay)
    draw = ImageDraw.Draw(canvas)
    for i, layer in enumerate(plan.layers):
        x0, y0, x1, _ = layer.bounding_box
        shape = "mask" if layer.mask is not None else "box"
        if layer.mask is not None and layer.mask.soft_edge > 0:
            shape = f"soft mask {layer.mask.soft_edge:g}"
        chars = max(6, int((x1 - x0) * width / (font_size * 0.55)) - 1)
        text = textwrap.wrap(f"{i + 1}. [{shape}] {layer.prompt}", width=chars)[:2]
        y = round(y0 * height) + 4
        for line in text:
            draw.text((round(x0 * width) + 6, y), line, fill=(20, 20, 20), font=font)
            y += font_size + 4
    image.paste(canvas.convert("RGB"), (0, 0))
