"""Canny edge map time at 1024×1024 (``rpg.canny.canny_edges``, OpenCV) on a synthetic photo.

    python bench/canny.py [--size 1024] [--repeats 20]

Prints the median milliseconds per call (PIL image in, PIL image out: conversion included).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rpg.canny import canny_edges


def picture(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    image = image.filter(ImageFilter.GaussianBlur(3))
    draw = ImageDraw.Draw(image)
    for i in range(20):
        x, y = rng.integers(0, size - size // 8, 2)
        draw.ellipse((int(x), int(y), int(x) + size // 8, int(y) + size // 10), fill=(i * 12,) * 3)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    image = picture(args.size)
    canny_edges(image)  # warm-up
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        canny_edges(image, 100, 200)
        times.append(time.perf_counter() - started)
    ms = 1000 * statistics.median(times)
    print(f"canny_edges {args.size}x{args.size}: {ms:.1f} ms median of {args.repeats}")


if __name__ == "__main__":
    main()
