"""The img2img and hires-fix flags of ``rpg generate``: ``--init-image``, ``--strength``,
``--hires``, ``--hires-strength``, ``--hires-steps``.

They set request fields (``init_image``, ``strength``, ``hires``); with ``--from`` each one
changes just that setting of the recorded request, and ``--hires 1`` turns a recorded hires fix
off. Ranges are checked here, so a bad value is a usage error naming its flag before any model
loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rpg.cli.checks import UsageError
from rpg.cli.preflight import finite_float
from rpg.models import MAX_HIRES_SCALE

__all__ = ["add_img2img_arguments", "describe_img2img", "img2img_overrides", "strength_value"]


def strength_value(text: str) -> float:
    """An argparse type: a strength in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text} is not in (0, 1]: strength is the share of the picture re-noised (0.3 keeps "
            "most of it, 1 repaints it)"
        )
    return value


def hires_scale(text: str) -> float:
    """An argparse type: a hires scale in (1, 4], or 1 for no hires pass."""
    value = finite_float(text)
    if not 1 <= value <= MAX_HIRES_SCALE:
        raise argparse.ArgumentTypeError(
            f"{text} is not in [1, {MAX_HIRES_SCALE:g}]: the hires scale multiplies both sides "
            "(1.5 or 2 are usual; 1 turns the hires pass off)"
        )
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of steps, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} steps: give at least 1")
    return value


def add_img2img_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("img2img and hires fix")
    group.add_argument(
        "--init-image",
        type=Path,
        metavar="IMG",
        help="render the plan over this picture with the model's stock img2img pipeline "
        "(without --size: at its size); it is embedded in the output PNG. With --from: "
        "replaces the embedded one",
    )
    group.add_argument(
        "--strength",
        type=strength_value,
        metavar="S",
        help="img2img: share of the init image re-noised, in (0, 1] (default 0.75)",
    )
    group.add_argument(
        "--hires",
        type=hires_scale,
        metavar="SCALE",
        help="hires fix: render, upscale the picture by SCALE (e.g. 1.5, 2), refine it with "
        "img2img and the same plan; 1 turns a recorded hires pass off",
    )
    group.add_argument(
        "--hires-strength",
        type=strength_value,
        metavar="S",
        help="hires fix: strength of the refining pass (default 0.5)",
    )
    group.add_argument(
        "--hires-steps",
        type=positive_int,
        metavar="N",
        help="hires fix: steps of the refining pass before strength (default: --steps)",
    )


def img2img_overrides(args: argparse.Namespace, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The request fields these flags set, over the ``recorded`` request (``--from``) if any."""
    recorded = recorded or {}
    fields: dict[str, Any] = {}
    if args.init_image is not None:
        # a new picture: its hash is recorded by the render
        fields.update(init_image=str(args.init_image), init_image_sha256=None)
    if args.strength is not None:
        recorded_image = recorded.get("init_image_sha256") or recorded.get("init_image")
        if args.init_image is None and not recorded_image:
            raise UsageError("--strength is for img2img: add --init-image IMG")
        fields["strength"] = args.strength
    hires = dict(recorded.get("hires") or {})
    tuned = {
        k: v
        for k, v in (("strength", args.hires_strength), ("steps", args.hires_steps))
        if v is not None
    }
    if args.hires is not None:
        if args.hires == 1:
            if tuned:
                raise UsageError(
                    "--hires 1 turns the hires pass off; leave out --hires-strength/-steps"
                )
            fields["hires"] = None
            return fields
        hires["scale"] = args.hires
    if tuned:
        if not hires:
            raise UsageError(
                "--hires-strength/--hires-steps tune the hires pass: add --hires SCALE"
            )
        hires.update(tuned)
    if args.hires is not None or tuned:
        fields["hires"] = hires
    return fields


def describe_img2img(request: Any, size: tuple[int, int]) -> str:
    """``", img2img ×0.75, hires 128x128"`` for the summary line; empty for a plain render."""
    parts = ""
    if request.strength is not None:
        parts += f", img2img strength {request.strength:g}"
    if request.hires is not None:
        parts += f", hires x{request.hires.scale:g} -> {size[0]}x{size[1]}"
    return parts
