"""``rpg layout``: draw a plan file as labelled rectangles."""

from __future__ import annotations

import argparse
from pathlib import Path

from rpg.models import RegionPlan


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``768x512``) into ``(width, height)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 768x512, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "layout",
        help="draw a plan as a picture",
        description="Draw a plan (the JSON of 'rpg plan --json', or a RegionPlan) as labelled "
        "rectangles, with the base prompt as a caption; a canvas plan's layers are drawn bottom "
        "to top, numbered from 1 at the bottom, masks tinted by their coverage.",
    )
    p.add_argument(
        "plan", type=Path, help="plan JSON file, or a PNG saved by rpg (its recorded plan)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("layout.png"),
        help="output image; the format follows the suffix (default: layout.png)",
    )
    p.add_argument("--size", type=parse_size, default=(768, 768), help="canvas size WxH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from rpg.cli.checks import UsageError, check_output_dir, read_plan_file
    from rpg.layout_image import draw_plan

    image_format = Image.registered_extensions().get(args.out.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise UsageError(
            f"--out {args.out}: not an image format Pillow writes; use .png (or .jpg, .webp)"
        )
    check_output_dir(args.out.parent, for_file=args.out)
    plan: RegionPlan = read_plan_file(args.plan)
    image = draw_plan(plan, args.size)
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, format=image_format)
    n = len(plan.regions)
    what = "layer" if plan.is_canvas else "region"
    print(f"wrote {args.out} ({n} {what}{'s' if n != 1 else ''})")
    return 0
