"""The loss picture of a ``train_shapes`` run: drawn from its losses, or from the progress lines
of its log."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """A plain loss-curve picture (log scale, one line per curve) drawn with PIL."""
    w, h, pad = 720, 360, 48
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    points = [p for c in curves.values() for p in c if p[1] > 0]
    if not points:
        image.save(path)
        return
    lo = math.log10(min(v for _, v in points))
    hi = math.log10(max(v for _, v in points))
    hi = hi if hi > lo else lo + 1
    draw.rectangle((pad, pad // 2, w - pad // 2, h - pad), outline="black")
    for i, (name, curve) in enumerate(curves.items()):
        if not curve:
            continue
        last = max(s for s, _ in curve) or 1
        xy = [
            (
                pad + (w - 1.5 * pad) * s / last,
                h - pad - (h - 1.5 * pad) * (math.log10(max(v, 1e-12)) - lo) / (hi - lo),
            )
            for s, v in curve
            if v > 0
        ]
        if len(xy) > 1:
            draw.line(xy, fill=colours[i % len(colours)], width=2)
        draw.text((pad + 8, pad // 2 + 6 + 14 * i), f"{name} (steps 0-{last})", fill=colours[i % 4])
    draw.text((4, pad // 2), f"{10**hi:.3g}", fill="black")
    draw.text((4, h - pad - 10), f"{10**lo:.3g}", fill="black")
    draw.text((w // 2 - 60, h - pad + 12), "step (each curve its own axis)", fill="black")
    image.save(path)


def curves_from_log(text: str) -> dict[str, list[tuple[int, float]]]:
    """The (step, smoothed loss) points a training log printed, for a run stopped before the end.

    Both trainings print ``vae  step N/M loss L`` and ``unet step N/M loss L`` lines; when a run
    is stopped early (or resumed from a VAE) its loss picture is drawn from them.
    """
    import re

    curves: dict[str, list[tuple[int, float]]] = {"vae loss": [], "unet loss": []}
    for match in re.finditer(r"(vae|unet) +step (\d+)/\d+ loss ([0-9.]+)", text):
        curves[f"{match.group(1)} loss"].append((int(match.group(2)), float(match.group(3))))
    return curves
