"""Picture grids of a model's samples, and stock vs rpg side by side, made by one command.

``python -m rpg.eval.grid samples --model shapes-sd --out samples.png`` renders the stock
pipeline on every single-object prompt of the shapes world; ``python -m rpg.eval.grid compare
--model shapes-sd --out compare.png "a red circle to the left of a blue square"`` renders one
prompt over seeds, a row with the stock pipeline given the whole prompt and a row with rpg
(the rules planner's plan, drawn over the images), both on the same canvas (``--size``, e.g.
``128x64`` to give each of two side-by-side regions the model's native 64×64), rpg with the
family's options given by ``--option`` (e.g. ``--option image_attention=region``). Each image is
scaled up without smoothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from rpg.models import RegionPlan
    from rpg.orchestrator import RPG

__all__ = ["compare_grid", "main", "samples_grid"]

_CELL = 128
_LABEL = 18
_OUTLINE = [(255, 0, 255), (0, 200, 200), (255, 140, 0), (120, 120, 120)]


def _stock(
    pipe: RPG,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    backbone = pipe.backbone
    width, height = size or backbone.native_size
    with backbone.using_scheduler(backbone.request_scheduler()):  # for this call only
        out = backbone.pipe(
            prompt=prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            width=width,
            height=height,
        )
    image: Image.Image = out.images[0]
    return image


def _cell(image: Image.Image, plan: RegionPlan | None = None) -> Image.Image:
    """The image scaled to ``_CELL`` pixels high (its aspect kept), the plan's boxes drawn over."""
    w, h = image.size
    width = max(1, round(w * _CELL / h))
    big = image.convert("RGB").resize((width, _CELL), Image.Resampling.NEAREST)
    if plan is not None:
        draw = ImageDraw.Draw(big)
        for i, (x0, y0, x1, y1) in enumerate(plan.boxes()):
            box = (x0 * width, y0 * _CELL, x1 * width - 1, y1 * _CELL - 1)
            draw.rectangle(box, outline=_OUTLINE[i % len(_OUTLINE)], width=1)
    return big


def _sheet(rows: Sequence[tuple[str, Sequence[Image.Image]]], title: str | None) -> Image.Image:
    label_w = max(8 * max(len(label) for label, _ in rows), 40)
    cols = max(len(images) for _, images in rows)
    cell_w = max(image.size[0] for _, images in rows for image in images)
    top = _LABEL if title else 0
    size = (label_w + cols * (cell_w + 4), top + len(rows) * (_CELL + 4))
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill="black")
    for r, (label, images) in enumerate(rows):
        y = top + r * (_CELL + 4)
        draw.text((4, y + _CELL // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            sheet.paste(image, (label_w + c * (cell_w + 4), y))
    return sheet


def samples_grid(
    pipe: RPG,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 20,
    guidance: float = 7.0,
) -> Image.Image:
    """One row per prompt, one column per seed: the stock pipeline's images."""
    rows = [
        (prompt, [_cell(_stock(pipe, prompt, s, steps, guidance)) for s in seeds])
        for prompt in prompts
    ]
    return _sheet(rows, None)


def compare_grid(
    pipe: RPG,
    prompt: str,
    seeds: Sequence[int],
    *,
    plan: RegionPlan | None = None,
    steps: int = 20,
    guidance: float = 7.0,
    size: tuple[int, int] | None = None,
    options: dict[str, Any] | None = None,
) -> Image.Image:
    """Two rows over seeds: the stock pipeline on the whole prompt, and rpg with its plan.

    Both render ``size`` (default: the model's native size); ``options`` are the model family's
    options for rpg's requests.
    """
    from rpg.models import GenerationRequest

    stock = [_cell(_stock(pipe, prompt, s, steps, guidance, size)) for s in seeds]
    width, height = size or (None, None)
    ours = []
    for s in seeds:
        result = pipe.generate(
            GenerationRequest(
                prompt=prompt,
                plan=plan,
                seed=s,
                steps=steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                options=dict(options or {}),
            )
        )
        ours.append(_cell(result.images[0], result.plan))
    return _sheet([("stock", stock), ("rpg", ours)], prompt)


def main(argv: Sequence[str] | None = None) -> Path:
    from rpg.cli.checks import UsageError, parse_key_values
    from rpg.cli.layout import parse_size
    from rpg.eval.prompts import shapes_single_set
    from rpg.orchestrator import RPG

    p = argparse.ArgumentParser(prog="python -m rpg.eval.grid", description=__doc__)
    p.add_argument("mode", choices=("samples", "compare"))
    p.add_argument("prompt", nargs="?", help="the prompt (compare)")
    p.add_argument("--model", default="shapes-sd")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--planner", default="rules")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--size", type=parse_size, metavar="WxH", help="canvas (compare)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a model family option for rpg's renders (compare; repeatable)",
    )
    args = p.parse_args(argv)
    try:
        options = parse_key_values(args.option, "--option")
    except UsageError as exc:
        p.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    pipe = RPG.from_pretrained(args.model, planner=args.planner, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    if args.mode == "samples":
        prompts = [item.prompt for item in shapes_single_set()]
        image = samples_grid(pipe, prompts, seeds, steps=args.steps, guidance=args.guidance)
    else:
        if not args.prompt:
            p.error("compare needs a prompt")
        image = compare_grid(
            pipe,
            args.prompt,
            seeds,
            steps=args.steps,
            guidance=args.guidance,
            size=args.size,
            options=options,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
