"""``rpg generate``: plan a prompt and render it, or re-render an image rpg saved.

Every image is saved with its request and plan in a PNG text chunk (see :mod:`rpg.metadata`), so
``rpg generate --from IMAGE.png --out again.png`` renders the same pixels, and any option given
next to ``--from`` changes just that setting. A ControlNet render records its ControlNets and
scales in the request and embeds its control images in the PNG, so ``--from`` loads the same
ControlNets and uses the same control images even after their files are gone.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.cli.checks import (
    UsageError,
    check_option_flags,
    check_output_file,
    check_scheduler_flag,
    validate_request,
    validation_message,
)
from rpg.cli.common import (
    DEFAULT_MODEL,
    add_model_arguments,
    add_planner_arguments,
    add_render_arguments,
    check_loading,
    check_render,
    load_rpg,
    option_overrides,
    prepare_planner,
    request_overrides,
)
from rpg.cli.preflight import check_control_flags, finite_float
from rpg.cli.refining import add_refine_argument, generate_refined
from rpg.errors import ConfigurationError
from rpg.models import GenerationRequest
from rpg.stopping import StopCallback, stop_on_sigint

if TYPE_CHECKING:
    from rpg.planners.base import Planner

__all__ = [
    "DEFAULT_MODEL",
    "add_parser",
    "build_request",
    "control_inputs",
    "describe_controls",
    "output_paths",
    "preflight",
    "run",
]

_EXAMPLES = """examples:
  rpg generate "A red cat on the left and a blue dog on the right" --seed 1 --out x.png \\
      --save-layout                                   # tiny-sd: offline, random weights
  rpg generate "..." --model ./my-sd15-folder --plan plan.json --seed 3 --out apple.png
  rpg generate "..." --model model.safetensors --config ./sd15-folder --size 512x768
  rpg generate --from apple.png --steps 40 --out apple-40.png   # re-render, change one setting
  rpg generate "a cat on a sofa" --mask-image regions.png --prompts "a cat BREAK a sofa"
  rpg generate "..." --model ./sdxl-folder --controlnet ./controlnet-canny-sdxl \\
      --control-image edges.png --control-scale 0.7   # SDXL detected, ControlNet added
  rpg generate --from cn.png --control-scale 0.5 --out cn-05.png
      # same ControlNet and (embedded) control image, weaker control
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "generate",
        help="plan and render a prompt",
        description="Plan the regions of a prompt (or read a plan file) and render it with a "
        "stock diffusers pipeline and regional cross-attention. Images are PNGs that carry the "
        "plan and the request, so '--from IMAGE' renders them again.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", help="what to draw (not needed with --from)")
    p.add_argument(
        "--from",
        dest="from_image",
        type=Path,
        metavar="IMAGE",
        help="re-render a PNG saved by rpg: same request, plan, ControlNets, scales and (embedded) "
        "control images; other options override its settings",
    )
    add_model_arguments(p)
    control = p.add_argument_group("controlnet")
    control.add_argument(
        "--controlnet",
        action="append",
        metavar="MODEL",
        help="ControlNet folder, .safetensors file, cached hub id, or tiny-controlnet / "
        "tiny-sdxl-controlnet (random weights); repeat for several. With --from: replaces the "
        "recorded ControlNets",
    )
    control.add_argument(
        "--control-image",
        action="append",
        type=Path,
        metavar="FILE",
        help="control image (edges, pose, depth ...), one per --controlnet in the same order; "
        "without --size the image is rendered at the first one's size. It is embedded in the "
        "output PNG. With --from: replaces the embedded images",
    )
    control.add_argument(
        "--control-scale",
        action="append",
        type=finite_float,
        metavar="S",
        help="ControlNet conditioning scale: one for all or one per --controlnet (default 1; "
        "with --from, the recorded scales)",
    )
    plan = add_planner_arguments(p)
    plan.add_argument(
        "--mask-image",
        type=Path,
        metavar="REGIONS.png",
        help="use a canvas plan made from a colour-coded picture: one flat colour per layer, "
        "black for the background (painted by the whole prompt); needs --prompts",
    )
    plan.add_argument(
        "--prompts",
        help="with --mask-image: one prompt per colour, separated by BREAK, in the order the "
        "colours first appear reading the picture row by row from the top left",
    )
    render = add_render_arguments(p)
    add_refine_argument(render)
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("rpg.png"),
        help="output PNG, the only format that keeps the plan and request '--from' reads "
        "(several images: NAME-0.png, NAME-1.png, ...); default: rpg.png",
    )
    out.add_argument(
        "--save-layout", action="store_true", help="also write the plan as NAME.layout.png"
    )
    p.set_defaults(run=run)


def build_request(args: argparse.Namespace) -> GenerationRequest:
    """The request to render: from ``--from`` (with overrides) or from the prompt and options.

    A bad value is a :class:`~rpg.cli.checks.UsageError` naming its flag; a bad value recorded
    in the ``--from`` image is an error naming that file.
    """
    overrides = request_overrides(args)
    if args.mask_image is not None:
        from rpg.cli.plan import mask_image_plan

        if args.plan is not None:
            raise UsageError("give --plan or --mask-image, not both")
        overrides["plan"] = mask_image_plan(args.mask_image, args.prompts)
    elif args.prompts is not None:
        raise UsageError("--prompts goes with --mask-image REGIONS.png (one prompt per colour)")
    flags = set(overrides) | {"model"} | ({"prompt"} if args.prompt is not None else set())
    if args.from_image is not None:
        from rpg.metadata import load_request

        try:
            data = load_request(args.from_image).model_dump()
        except ValidationError as exc:
            raise ConfigurationError(
                f"{args.from_image}: the recorded request is invalid: {validation_message(exc)}"
            ) from None
        if args.prompt is not None and args.prompt != data["prompt"]:
            # A new prompt needs a new plan unless one is given.
            data.update(prompt=args.prompt, plan=None)
        if args.model is not None:
            data["model"] = args.model
        if "options" in overrides:  # flags change the recorded options one by one
            overrides["options"] = {**data.get("options", {}), **overrides["options"]}
        data.update(overrides)
        return validate_request(data, from_flags=flags, source=str(args.from_image))
    if args.prompt is None:
        raise UsageError("give a PROMPT to draw, or --from IMAGE.png to re-render")
    return validate_request(
        {"prompt": args.prompt, "model": args.model or DEFAULT_MODEL, **overrides},
        from_flags=flags,
    )


def preflight(args: argparse.Namespace, request: GenerationRequest) -> Planner | None:
    """Everything that can be checked before the model loads; returns the planner to use.

    The output path, the scheduler, the control image files, and the planner (made now, so an
    unknown name, a missing API key or a planner that cannot review images for ``--refine``
    fails in well under a second). ``None`` when the request has a plan and nothing reviews it.
    """
    check_output_file(args.out)
    check_option_flags(option_overrides(args), request.model)
    check_scheduler_flag(
        request.scheduler,
        given=args.scheduler is not None,
        source=str(args.from_image) if args.from_image is not None else None,
    )
    model = request.model or DEFAULT_MODEL
    check_control_flags(
        model,
        args.controlnet,
        args.control_image,
        args.control_scale,
        recorded=len(request.controls),
    )
    for path in args.control_image or []:
        if not path.is_file():
            raise ConfigurationError(f"{path}: control image not found")
    controlnet = args.controlnet or [c.controlnet for c in request.controls]
    check_loading(args, model, controlnet)
    if args.refine and request.num_images != 1:
        raise UsageError("--refine reviews one image per round; leave out --num-images")
    if request.plan is not None and not args.refine:
        return None
    return prepare_planner(args, request.planner, images="--refine" if args.refine else None)


def output_paths(out: Path, count: int) -> list[Path]:
    """``out`` for one image; ``stem-0.png``, ``stem-1.png``, ... for several."""
    if count == 1:
        return [out]
    suffix = out.suffix or ".png"
    return [out.with_name(f"{out.stem}-{i}{suffix}") for i in range(count)]


def control_inputs(
    args: argparse.Namespace,
    backbone: Any,
    request: GenerationRequest,
    embedded: Sequence[Any] = (),
) -> tuple[dict[str, Any], GenerationRequest]:
    """ControlNet images and scales for ``generate``, and the request sized to the first image.

    Images: ``--control-image`` files, else (with ``--from``) the images ``embedded`` in the PNG,
    else the files the request recorded. Scales: ``--control-scale``, else the request's. The
    request's recorded controls are renamed to ``--controlnet`` when that replaces them, and
    dropped when it changes how many ControlNets there are. Images are checked against the
    ControlNets by the backbone (in ``RPG.generate``), where the API does it too.
    """
    from rpg.backbones.controlnet import ControlNetBackboneMixin, open_control_image

    if not isinstance(backbone, ControlNetBackboneMixin):
        if args.control_image or args.control_scale:
            raise ConfigurationError(
                "--control-image/--control-scale need --controlnet MODEL (or a ControlNet "
                "pipeline folder as --model)"
            )
        return {}, request
    names = backbone.controlnet_names
    recorded = list(request.controls)
    if len(recorded) != len(names):
        recorded, embedded = [], ()
    elif args.controlnet:
        renamed = zip(recorded, names, strict=True)
        recorded = [c.model_copy(update={"controlnet": name}) for c, name in renamed]
    request = request.model_copy(update={"controls": tuple(recorded)})

    images: list[Any] = [str(path) for path in args.control_image or []]
    if not images and recorded:
        for i, recorded_control in enumerate(recorded):
            image = embedded[i] if i < len(embedded) else None
            if image is None:
                path = recorded_control.image
                if path is None or not Path(path).expanduser().is_file():
                    where = f"embedded in {args.from_image}" if args.from_image else "given"
                    name = recorded_control.controlnet
                    raise ConfigurationError(
                        f"control image {i + 1} (for ControlNet {name!r}) is not {where} and "
                        f"its file {path or '(no path recorded)'} is not found; pass "
                        "--control-image FILE"
                    )
                image = str(Path(path).expanduser())
            images.append(image)
    if args.control_image and request.width is None and request.height is None:
        width, height = open_control_image(images[0]).size
        request = request.model_copy(
            update={"width": max(8, width // 8 * 8), "height": max(8, height // 8 * 8)}
        )
    control: dict[str, Any] = {"image": images or None}
    if args.control_scale:
        control["controlnet_conditioning_scale"] = args.control_scale
    return control, request


def describe_controls(request: GenerationRequest) -> str:
    """``", ControlNet NAME ×SCALE"`` for the summary line; empty without ControlNet."""
    if not request.controls:
        return ""
    return ", ControlNet " + "; ".join(f"{c.controlnet} ×{c.scale:g}" for c in request.controls)


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(part)`` to ``path``'s ``.part`` name, then rename it to ``path``.

    An interrupted or failed write leaves neither a half-written ``path`` nor the part file.
    """
    part = path.with_name(f"{path.name}.part")
    try:
        write(part)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    from rpg.metadata import save_png

    request = build_request(args)
    planner = preflight(args, request)
    if planner is not None and request.planner not in (None, planner.name):
        # 'auto' (or a plugin's alias) made another planner: record the one that plans.
        request = request.model_copy(update={"planner": planner.name})
    model = request.model or DEFAULT_MODEL
    embedded: list[Any] = []
    if args.from_image is not None and request.controls and not args.control_image:
        from rpg.metadata import read_control_images

        embedded = read_control_images(args.from_image)
    controlnet = args.controlnet or [c.controlnet for c in request.controls] or None
    with stop_on_sigint("rpg generate") as interrupts:
        pipe = load_rpg(args, model, planner, controlnet=controlnet)
        control, request = control_inputs(args, pipe.backbone, request, embedded)
        check_render(pipe, request)
        # Ctrl-C stops the render within one attention layer; nothing is written then.
        with interrupts.render(pipe):
            if args.refine:
                result = generate_refined(pipe, request, args.out, args.refine, **control)
            else:
                result = pipe.generate(
                    request, callback_on_step_end=StopCallback(interrupts.event), **control
                )

        paths = output_paths(args.out, len(result.images))
        for i, (image, path) in enumerate(zip(result.images, paths, strict=True)):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(
                path,
                functools.partial(
                    save_png,
                    image,
                    request=result.request,
                    plan=result.plan,
                    index=i,
                    control_images=result.control_images,
                ),
            )
    req = result.request
    assert req.seed is not None
    seeds = str(req.seed) if len(paths) == 1 else f"{req.seed}..{req.seed + len(paths) - 1}"
    regions = len(result.plan.regions)
    if result.plan.is_canvas:
        shape = f"{regions} layer{'s' if regions != 1 else ''} (canvas)"
    else:
        shape = (
            f"{regions} region{'s' if regions != 1 else ''}, split {result.plan.to_split_ratio()}"
        )
    print(
        f"wrote {', '.join(str(p) for p in paths)} ({req.width}x{req.height}, seed {seeds}, "
        f"{shape}"
        f"{describe_controls(req)}, {result.timings.get('total', 0.0):.1f} s)"
    )
    if args.save_layout:
        from rpg.layout_image import draw_plan

        assert req.width is not None and req.height is not None
        layout_path = args.out.with_name(f"{args.out.stem}.layout.png")
        # Same aspect as the image, but large enough to read the labels on small images.
        scale = max(1.0, 512 / max(req.width, req.height))
        size = (round(req.width * scale), round(req.height * scale))
        draw_plan(result.plan, size).save(layout_path, format="PNG")
        print(f"wrote {layout_path} (the plan)")
    return 0
