"""``rpg edit``: repaint the regions of an image that an instruction is about.

A multimodal planner picks the regions (from the plan in the image's rpg metadata, or from a
plan it makes for a plain image) and their new prompts; the stock inpainting pipeline repaints
them with regional attention, and every pixel outside the feathered mask is kept exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rpg.cli.checks import (
    UsageError,
    check_output_file,
    check_scheduler_flag,
    validate_request,
)
from rpg.cli.common import (
    DEFAULT_MODEL,
    add_model_arguments,
    add_planner_choice,
    add_planner_service_arguments,
    check_loading,
    load_rpg,
    prepare_planner,
)
from rpg.cli.generate import write_atomically
from rpg.cli.preflight import finite_float, seed_value
from rpg.errors import ConfigurationError
from rpg.stopping import stop_on_sigint

_EXAMPLES = """examples:
  rpg edit apple.png "make the mug green" --planner openai --out apple-green.png
  rpg edit photo.png "put a red hat on the man" --model ./my-sd15-folder \\
      --planner ollama --planner-model qwen2.5vl --seed 3
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "edit",
        help="repaint the regions of an image that an instruction is about",
        description="Ask a multimodal planner which regions of IMAGE to change for INSTRUCTION "
        "and repaint only those with the stock inpainting pipeline and regional attention; "
        "pixels outside the (feathered) mask stay exactly as they were. IMAGE may be a PNG "
        "saved by rpg (its plan and settings are reused) or any image.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, metavar="IMAGE", help="the image to edit")
    p.add_argument("instruction", metavar="INSTRUCTION", help='what to change, e.g. "make it red"')
    add_model_arguments(p)  # without --model: the model in IMAGE's metadata, else tiny-sd
    plan = p.add_argument_group("planner (must read images: openai or ollama)")
    add_planner_choice(plan)
    add_planner_service_arguments(plan)
    render = p.add_argument_group("rendering (defaults: IMAGE's metadata, else rpg's defaults)")
    render.add_argument("--steps", type=int, help="denoising steps")
    render.add_argument("--seed", type=seed_value, help="random seed, 0 to 2**64-1")
    render.add_argument("--guidance", type=finite_float, help="guidance scale")
    render.add_argument("--negative", help="negative prompt")
    render.add_argument("--scheduler", help="scheduler name")
    render.add_argument(
        "--strength",
        type=finite_float,
        default=1.0,
        help="how much to re-noise the masked area (0-1]",
    )
    render.add_argument(
        "--feather",
        type=finite_float,
        help="soft mask edge in pixels (default: 3%% of the short side)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="output PNG; default: IMAGE's name + .edit.png")
    out.add_argument("--save-mask", action="store_true", help="also write NAME.mask.png")
    p.set_defaults(run=run)


def _check_values(args: argparse.Namespace) -> None:
    """The rendering flags, checked like a request's fields, before anything loads."""
    if not 0 < args.strength <= 1:
        raise UsageError(f"--strength: must be more than 0 and at most 1, got {args.strength:g}")
    if args.feather is not None and args.feather < 0:
        raise UsageError(f"--feather: must be 0 or more pixels, got {args.feather:g}")
    pairs = (
        ("steps", args.steps),
        ("seed", args.seed),
        ("guidance_scale", args.guidance),
        ("negative_prompt", args.negative),
    )
    given = {k: v for k, v in pairs if v is not None}
    if not args.instruction.strip():
        raise UsageError("INSTRUCTION is empty; say what to change, e.g. 'make the mug green'")
    validate_request({"prompt": args.instruction, **given}, from_flags=set(given))
    if args.scheduler is not None:
        check_scheduler_flag(args.scheduler, given=True)


def run(args: argparse.Namespace) -> int:
    _check_values(args)
    if not args.image.is_file():
        raise ConfigurationError(f"{args.image}: image not found")
    target = args.out or args.image.with_name(f"{args.image.stem}.edit.png")
    check_output_file(target)
    planner = prepare_planner(args, args.planner, images="rpg edit")
    check_loading(args, args.model)

    from rpg.edit import edit, read_image  # torch and diffusers: only once the checks passed
    from rpg.metadata import save_png

    source, stored = read_image(args.image)
    model = args.model or (stored.model if stored is not None else None) or DEFAULT_MODEL
    with stop_on_sigint("rpg edit") as interrupts:
        pipe = load_rpg(args, model, planner)
        with interrupts.render(pipe):
            result = edit(
                pipe,
                args.image,
                args.instruction,
                seed=args.seed,
                steps=args.steps,
                guidance_scale=args.guidance,
                negative_prompt=args.negative,
                scheduler=args.scheduler,
                strength=args.strength,
                feather=args.feather,
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda part: save_png(result.image, part, result.request, result.plan))
    where = "its metadata" if stored is not None and stored.plan is not None else "the planner"
    changed = ", ".join(f"{i} → {result.plan.regions[i].prompt!r}" for i in result.edit.indices)
    print(f"plan from {where}; {result.edit.explanation}".rstrip("; "))
    print(
        f"wrote {target} ({source.width}x{source.height}, seed {result.request.seed}, "
        f"repainted region{'s' if len(result.edit.indices) != 1 else ''} {changed}, "
        f"{result.timings.get('total', 0.0):.1f} s)"
    )
    if args.save_mask:
        mask_path = target.with_name(f"{target.stem}.mask.png")
        result.mask.save(mask_path, format="PNG")
        print(f"wrote {mask_path} (the mask)")
    return 0
