"""Canvas layers from a colour-coded picture: one flat colour per layer, black for background.

People sketch regions in any paint program faster than they type boxes. The picture is read
exactly: every pixel's RGB colour (alpha ignored) names its layer; pure black ``(0, 0, 0)`` is the
background, which the base prompt (else the whole prompt) paints. Layers are numbered in the
order their colours first appear when the picture is read like text, row by row from the top,
left to right in each row, and get the prompts in that order. The colours cover the canvas
disjointly, so the order does not change what is painted, only which prompt goes where.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rpg.layout import split_prompts
from rpg.models import DEFAULT_BASE_RATIO, MAX_LAYERS, Layer, LayerMask, RegionPlan

__all__ = ["MASK_SIDE", "colour_layers", "plan_from_mask_image"]

#: Longest side of the masks made from a picture (larger pictures are area-averaged down).
MASK_SIDE = 512


def colour_layers(image: Image.Image) -> list[tuple[tuple[int, int, int], np.ndarray]]:
    """``[(colour, bool mask [h, w]), ...]`` of every non-black colour, in reading order of
    first appearance (see the module docstring)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    flat = codes.reshape(-1)
    values, first = np.unique(flat, return_index=True)
    order = [int(v) for v, _ in sorted(zip(values, first, strict=True), key=lambda t: t[1])]
    found = []
    for code in order:
        if code == 0:
            continue
        colour = (code >> 16 & 255, code >> 8 & 255, code & 255)
        found.append((colour, codes == code))
    return found


def _reduced(mask: np.ndarray, max_side: int) -> Image.Image | np.ndarray:
    """``mask`` (bool) as it is, or area-averaged to at most ``max_side`` pixels a side."""
    h, w = mask.shape
    if max(h, w) <= max_side:
        return mask
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(size, Image.Resampling.BOX)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def plan_from_mask_image(
    image: Image.Image | str | os.PathLike[str],
    prompts: str | Sequence[str],
    *,
    base_prompt: str | None = None,
    base_ratio: float = DEFAULT_BASE_RATIO,
    soft_edge: float = 0.0,
    max_side: int = MASK_SIDE,
) -> RegionPlan:
    """A canvas plan with one mask layer per colour of ``image`` (a picture or its path).

    ``prompts`` is a list or one ``BREAK``-separated string, one prompt per non-black colour in
    reading order of first appearance. A colour count that differs from the prompt count is a
    clear error listing the colours found (anti-aliased edges and JPEG files add colours: paint
    with flat colours and save PNG). A picture larger than ``max_side`` is reduced for the masks
    by area averaging (edge pixels become grey levels holding their exact coverage), which keeps
    the plan small and changes nothing at the latent grids of images up to 8× that side.
    """
    if isinstance(image, Image.Image):
        picture = image
    else:
        path = Path(image)
        try:
            with Image.open(path) as opened:
                picture = opened.copy()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: mask image not found") from None
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the mask image ({exc})") from None
    items = split_prompts(prompts) if isinstance(prompts, str) else [p.strip() for p in prompts]
    for i, p in enumerate(items):
        if not p:
            raise ValueError(f"prompt {i + 1} of {len(items)} is empty")
    layers = colour_layers(picture)
    if not layers:
        raise ValueError(
            "the mask image is all black (background); paint each layer's area in its own colour"
        )
    if len(layers) > MAX_LAYERS:
        raise ValueError(
            f"the mask image has {len(layers)} colours besides black, more than the "
            f"{MAX_LAYERS} layers a plan may have; anti-aliased edges or JPEG compression add "
            "colours: paint with flat colours, no smoothing, and save as PNG"
        )
    if len(layers) != len(items):
        shown = ", ".join(f"{_hex(c)} ({int(m.sum())} px)" for c, m in layers[:8])
        more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
        raise ValueError(
            f"the mask image has {len(layers)} colour{'s' if len(layers) != 1 else ''} besides "
            f"black ({shown}{more}) but {len(items)} prompt{'s' if len(items) != 1 else ''} "
            "given: one prompt per colour, in the order the colours first appear reading the "
            "picture row by row from the top left; black is the background"
        )
    return RegionPlan(
        layers=[
            Layer(
                prompt=prompt,
                mask=LayerMask.from_image(_reduced(mask, max_side), soft_edge=soft_edge),
            )
            for prompt, (_, mask) in zip(items, layers, strict=True)
        ],
        base_prompt=base_prompt,
        base_ratio=base_ratio,
    )
