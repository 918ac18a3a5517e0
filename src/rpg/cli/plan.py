"""``rpg plan``: ask a planner for a plan, or build and check a hand-written one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from rpg.cli.checks import UsageError, make_planner, validation_message
from rpg.cli.common import (
    add_deprecated_alias,
    add_planner_choice,
    add_planner_service_arguments,
    planner_options,
)
from rpg.cli.preflight import finite_float
from rpg.errors import ConfigurationError, SplitRatioError
from rpg.models import DEFAULT_BASE_RATIO, PlanResult, Recaption, RegionPlan
from rpg.planners.base import DEFAULT_PLANNER


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="plan the regions of a prompt",
        description="Recaption a prompt and split the canvas into regions with a planner, or "
        "build a plan by hand from a split ratio and BREAK-separated prompts.",
        epilog='examples:\n  rpg plan "From left to right, a red apple, a blue mug and a yellow '
        'banana" --json > plan.json\n  rpg plan --split-ratio "1,1,1;1,1,1" --prompts "a BREAK '
        'b BREAK c BREAK d"   # two rows of two\n  rpg plan --mask-image regions.png '
        '--prompts "a red cat BREAK a blue dog" --json > canvas.json',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", help="the prompt to plan (not needed with --split-ratio)")
    add_planner_choice(p)
    add_planner_service_arguments(p)
    # 'rpg plan --model' named the planner's model, 'rpg generate --model' the diffusion model.
    add_deprecated_alias(p, "--model", "--planner-model", "planner_model")
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let --planner hf download a hub model that is not in the cache (default: cache only)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the plan cache")
    p.add_argument("--json", action="store_true", help="print the plan result as JSON")
    p.add_argument(
        "--explain",
        action="store_true",
        help="say why the prompt was split this way: the rule the 'rules' planner used, or an "
        "LLM planner's raw reply (with --json it is the 'raw' field)",
    )
    hand = p.add_argument_group("hand-written plan")
    hand.add_argument("--split-ratio", help="rows and widths, e.g. '1,1' or '1,2;1,1,1'")
    hand.add_argument("--prompts", help="regional prompts separated by BREAK")
    hand.add_argument(
        "--mask-image",
        type=Path,
        metavar="REGIONS.png",
        help="a canvas plan from a colour-coded picture: one flat colour per layer, black for "
        "the background; --prompts gives one prompt per colour, in the order the colours first "
        "appear reading the picture row by row from the top left",
    )
    hand.add_argument("--base-prompt", help="prompt blended into every region")
    hand.add_argument(
        "--base-ratio",
        type=finite_float,
        default=None,
        help=f"weight of the base prompt, 0 to 1 (default {DEFAULT_BASE_RATIO})",
    )
    p.set_defaults(run=run)


def _hand_plan(args: argparse.Namespace) -> PlanResult:
    if args.prompts is None:
        raise UsageError("--split-ratio needs --prompts 'first BREAK second ...'")
    try:
        plan = RegionPlan.from_split_ratio(
            args.split_ratio,
            args.prompts,
            base_prompt=args.base_prompt,
            base_ratio=DEFAULT_BASE_RATIO if args.base_ratio is None else args.base_ratio,
        )
    except SplitRatioError as exc:
        raise UsageError(f"--split-ratio/--prompts: {exc}") from None
    except ValidationError as exc:
        flags = {"base_ratio": "--base-ratio", "base_prompt": "--base-prompt"}
        raise UsageError(validation_message(exc, flags)) from None
    prompt = args.prompt or plan.to_prompt_text()
    return PlanResult(recaption=Recaption(original_prompt=prompt), plan=plan, planner="manual")


def _mask_plan(args: argparse.Namespace) -> PlanResult:
    plan = mask_image_plan(
        args.mask_image,
        args.prompts,
        base_prompt=args.base_prompt,
        base_ratio=DEFAULT_BASE_RATIO if args.base_ratio is None else args.base_ratio,
    )
    prompt = args.prompt or plan.to_prompt_text()
    return PlanResult(recaption=Recaption(original_prompt=prompt), plan=plan, planner="manual")


def mask_image_plan(
    path: Path,
    prompts: str | None,
    *,
    base_prompt: str | None = None,
    base_ratio: float = DEFAULT_BASE_RATIO,
) -> RegionPlan:
    """``--mask-image`` with ``--prompts`` as a canvas plan; every error names the flags."""
    from rpg.canvas_image import plan_from_mask_image

    if prompts is None:
        raise UsageError("--mask-image needs --prompts 'first BREAK second ...' (one per colour)")
    try:
        return plan_from_mask_image(path, prompts, base_prompt=base_prompt, base_ratio=base_ratio)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    except ValidationError as exc:
        flags = {"base_ratio": "--base-ratio", "base_prompt": "--base-prompt"}
        raise UsageError(f"--mask-image: {validation_message(exc, flags)}") from None
    except ValueError as exc:
        raise UsageError(f"--mask-image {path}: {exc}") from None


def _planned(args: argparse.Namespace) -> PlanResult:
    if args.base_ratio is not None and not 0 <= args.base_ratio <= 1:
        raise UsageError(f"--base-ratio: must be between 0 and 1, got {args.base_ratio:g}")
    options = planner_options(args)
    if args.no_cache:
        options["cache"] = False
    planner = make_planner(args.planner or DEFAULT_PLANNER, options)
    result = planner.plan(args.prompt)
    if args.base_ratio is not None:
        result = result.model_copy(update={"plan": result.plan.with_base_ratio(args.base_ratio)})
    return result


def format_plan(result: PlanResult) -> str:
    """A readable table of a plan result."""
    plan = result.plan
    lines = []
    if result.planner and result.planner != "manual":
        lines.append(f"planner:     {result.planner} ({result.seconds:.2f} s)")
    if result.recaption.recaption:
        lines.append(f"recaption:   {result.recaption.recaption}")
    if plan.is_canvas:
        return "\n".join([*lines, *_format_canvas(plan)])
    lines.append(f"split ratio: {plan.to_split_ratio()}")
    if plan.base_prompt is not None:
        lines.append(f"base prompt: {plan.base_prompt} (ratio {plan.base_ratio:g})")
    lines.append("")
    lines.append(f"{'#':>2}  {'row':>3}  {'box x0,y0 - x1,y1':<21}  prompt")
    index = 0
    for r, row in enumerate(plan.rows):
        for region in row.regions:
            x0, y0, x1, y1 = plan.boxes()[index]
            box = f"{x0:.2f},{y0:.2f} - {x1:.2f},{y1:.2f}"
            lines.append(f"{index + 1:>2}  {r + 1:>3}  {box:<21}  {region.prompt}")
            index += 1
    return "\n".join(lines)


def _format_canvas(plan: RegionPlan) -> list[str]:
    """A canvas plan's lines: its layers bottom to top, with their shapes."""
    n = len(plan.layers)
    lines = [f"canvas:      {n} layer{'s' if n != 1 else ''}, bottom to top"]
    if plan.base_prompt is not None:
        lines.append(f"base prompt: {plan.base_prompt} (ratio {plan.base_ratio:g}; background)")
    else:
        lines.append("background:  the whole prompt (no base prompt)")
    lines.append("")
    lines.append(f"{'#':>2}  {'shape':<9}  {'box x0,y0 - x1,y1':<21}  prompt")
    for i, (layer, (x0, y0, x1, y1)) in enumerate(zip(plan.layers, plan.boxes(), strict=True)):
        shape = "box"
        if layer.mask is not None:
            shape = "mask" if not layer.mask.soft_edge else f"mask~{layer.mask.soft_edge:g}"
        box = f"{x0:.2f},{y0:.2f} - {x1:.2f},{y1:.2f}"
        extra = f"  (base weight {layer.base_weight:g})" if layer.base_weight is not None else ""
        lines.append(f"{i + 1:>2}  {shape:<9}  {box:<21}  {layer.prompt}{extra}")
    return lines


def explain_plan(result: PlanResult) -> str:
    """Why the plan looks the way it does, for ``--explain``."""
    if result.planner == "manual":
        if result.plan.is_canvas:
            return "why: a hand-written canvas (--mask-image and --prompts)"
        return "why: a hand-written plan (--split-ratio and --prompts)"
    if not result.raw.strip():
        return f"why: the {result.planner or 'unnamed'} planner recorded no explanation"
    if result.planner == "rules":
        return result.raw.strip()
    reply = "\n".join(f"  {line}" for line in result.raw.strip().splitlines())
    return f"why: the {result.planner} planner's reply was\n{reply}"


def run(args: argparse.Namespace) -> int:
    if args.split_ratio is not None and args.mask_image is not None:
        raise UsageError("give --split-ratio (a grid) or --mask-image (a canvas), not both")
    if args.split_ratio is not None:
        result = _hand_plan(args)
    elif args.mask_image is not None:
        result = _mask_plan(args)
    elif args.prompt:
        result = _planned(args)
    else:
        raise UsageError("give a PROMPT, or --split-ratio or --mask-image with --prompts")
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(format_plan(result))
        if args.explain:
            print(f"\n{explain_plan(result)}")
    if args.split_ratio is None and args.mask_image is None and not args.json:
        print(f"\nplanned by {result.planner} in {result.seconds:.2f} s", file=sys.stderr)
    return 0
