"""``rpg generate``: plan a prompt and render it, or re-render an image rpg saved.

Every image is saved with its request and plan in a PNG text chunk (see :mod:`rpg.metadata`), so
``rpg generate --from IMAGE.png --out again.png`` renders the same pixels, and any option given
next to ``--from`` changes just that setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rpg.cli.layout import parse_size
from rpg.cli.refining import add_refine_argument, generate_refined
from rpg.errors import ConfigurationError
from rpg.models import GenerationRequest, RegionPlan

#: The model used when ``--model`` is not given: runs offline anywhere (random weights).
DEFAULT_MODEL = "tiny-sd"

_EXAMPLES = """examples:
  rpg generate "A red cat on the left and a blue dog on the right" --seed 1 --out x.png \\
      --save-layout                                   # tiny-sd: offline, random weights
  rpg generate "..." --model ./my-sd15-folder --plan plan.json --seed 3 --out apple.png
  rpg generate "..." --model model.safetensors --config ./sd15-folder --size 512x768
  rpg generate --from apple.png --steps 40 --out apple-40.png   # re-render, change one setting
  rpg generate "..." --model ./sdxl-folder --controlnet ./controlnet-canny-sdxl \\
      --control-image edges.png --control-scale 0.7   # SDXL detected, ControlNet added
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
        help="re-render a PNG saved by rpg; other options override its settings",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        help="hub id (read from the local Hugging Face cache), diffusers folder, or "
        f".safetensors/.ckpt file; default: {DEFAULT_MODEL} (random weights, offline)",
    )
    model.add_argument(
        "--config",
        metavar="FOLDER",
        help="diffusers folder with the configs of a single-file --model (needed offline)",
    )
    model.add_argument(
        "--allow-download",
        action="store_true",
        help="download a hub model that is not in the cache (default: cache only)",
    )
    model.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    model.add_argument("--dtype", help="auto (default), float16, bfloat16 or float32")
    control = p.add_argument_group("controlnet")
    control.add_argument(
        "--controlnet",
        action="append",
        metavar="MODEL",
        help="ControlNet folder, .safetensors file, cached hub id, or tiny-controlnet / "
        "tiny-sdxl-controlnet (random weights); repeat for several",
    )
    control.add_argument(
        "--control-image",
        action="append",
        type=Path,
        metavar="FILE",
        help="control image (edges, pose, depth ...), one per --controlnet in the same order; "
        "without --size the image is rendered at the first one's size",
    )
    control.add_argument(
        "--control-scale",
        action="append",
        type=float,
        metavar="S",
        help="ControlNet conditioning scale: one for all or one per --controlnet (default 1)",
    )
    plan = p.add_argument_group("plan")
    plan.add_argument("--plan", type=Path, metavar="PLAN.json", help="use this plan, no planner")
    plan.add_argument("--planner", help="planner name (see 'rpg plugins'); default: rules")
    plan.add_argument("--planner-model", help="model name for LLM planners")
    plan.add_argument("--base-url", help="OpenAI-compatible server URL for the openai planner")
    plan.add_argument("--host", help="Ollama server URL for the ollama planner")
    plan.add_argument("--base-ratio", type=float, help="weight of the base prompt, 0 to 1")
    render = p.add_argument_group("rendering")
    render.add_argument("--size", type=parse_size, help="WxH, multiples of 8; default: native")
    render.add_argument("--steps", type=int, help="denoising steps (default 30)")
    render.add_argument("--seed", type=int, help="random seed (default: random, recorded)")
    render.add_argument("--guidance", type=float, help="guidance scale (default 7)")
    render.add_argument("--negative", help="negative prompt for the whole image")
    render.add_argument("--scheduler", help="dpm++2m-karras (default), euler-a, euler, ddim, ...")
    render.add_argument("--num-images", type=int, help="images to render (default 1)")
    add_refine_argument(render)
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("rpg.png"),
        help="output PNG (several images: NAME-0.png, NAME-1.png, ...); default: rpg.png",
    )
    out.add_argument(
        "--save-layout", action="store_true", help="also write the plan as NAME.layout.png"
    )
    p.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields set on the command line (``None`` means "not given")."""
    fields: dict[str, Any] = {
        "steps": args.steps,
        "seed": args.seed,
        "guidance_scale": args.guidance,
        "negative_prompt": args.negative,
        "scheduler": args.scheduler,
        "num_images": args.num_images,
        "base_ratio": args.base_ratio,
        "planner": args.planner,
    }
    if args.size is not None:
        fields["width"], fields["height"] = args.size
    if args.plan is not None:
        fields["plan"] = RegionPlan.load(args.plan)
    return {k: v for k, v in fields.items() if v is not None}


def build_request(args: argparse.Namespace) -> GenerationRequest:
    """The request to render: from ``--from`` (with overrides) or from the prompt and options."""
    overrides = _overrides(args)
    if args.from_image is not None:
        from rpg.metadata import load_request

        data = load_request(args.from_image).model_dump()
        if args.prompt is not None and args.prompt != data["prompt"]:
            # A new prompt needs a new plan unless one is given.
            data.update(prompt=args.prompt, plan=None)
        if args.model is not None:
            data["model"] = args.model
        data.update(overrides)
        return GenerationRequest.model_validate(data)
    if args.prompt is None:
        raise ConfigurationError("give a PROMPT to draw, or --from IMAGE.png to re-render")
    return GenerationRequest.model_validate(
        {"prompt": args.prompt, "model": args.model or DEFAULT_MODEL, **overrides}
    )


def output_paths(out: Path, count: int) -> list[Path]:
    """``out`` for one image; ``stem-0.png``, ``stem-1.png``, ... for several."""
    if count == 1:
        return [out]
    suffix = out.suffix or ".png"
    return [out.with_name(f"{out.stem}-{i}{suffix}") for i in range(count)]


def control_inputs(
    args: argparse.Namespace, backbone: Any, request: GenerationRequest
) -> tuple[dict[str, Any], GenerationRequest]:
    """ControlNet images and scales for ``generate``, and the request sized to the first image.

    Images are checked against the ControlNets by the backbone, where the API does it too.
    """
    from rpg.backbones.controlnet import ControlNetBackboneMixin, open_control_image

    if not isinstance(backbone, ControlNetBackboneMixin):
        if args.control_image or args.control_scale:
            raise ConfigurationError(
                "--control-image/--control-scale need --controlnet MODEL (or a ControlNet "
                "pipeline folder as --model)"
            )
        return {}, request
    images = [open_control_image(path) for path in args.control_image or []]
    if images and request.width is None and request.height is None:
        width, height = images[0].size
        request = request.model_copy(
            update={"width": max(8, width // 8 * 8), "height": max(8, height // 8 * 8)}
        )
    control: dict[str, Any] = {"image": images or None}
    if args.control_scale:
        control["controlnet_conditioning_scale"] = args.control_scale
    return control, request


def run(args: argparse.Namespace) -> int:
    from rpg.backbones.loading import resolve_model
    from rpg.backbones.schedulers import check_scheduler
    from rpg.metadata import save_png
    from rpg.orchestrator import RPG, select_backbone

    request = build_request(args)
    check_scheduler(request.scheduler)  # fail before loading a model
    model = request.model or DEFAULT_MODEL
    info = resolve_model(model, config=args.config, allow_download=args.allow_download)
    if info.is_tiny:
        print(
            f"note: {model!r} has random weights; its images are noise (it is for trying rpg "
            "offline). Pass --model with a real checkpoint for pictures.",
            file=sys.stderr,
        )
    planner_options = {
        key: value
        for key, value in (
            ("model", args.planner_model),
            ("base_url", args.base_url),
            ("host", args.host),
        )
        if value is not None
    }
    backbone_cls = select_backbone(info)
    load_options: dict[str, Any] = {}
    if args.controlnet:
        from rpg.backbones.controlnet import controlnet_backbone_for

        backbone_cls = controlnet_backbone_for(backbone_cls)
        load_options["controlnet"] = args.controlnet
    backbone = backbone_cls.load(
        info, device=args.device or "auto", dtype=args.dtype or "auto", **load_options
    )
    control, request = control_inputs(args, backbone, request)
    pipe = RPG(
        backbone,
        planner=request.planner or "rules",
        planner_options=planner_options,
        model=model,
    )
    if args.refine:
        if control:
            raise ConfigurationError("--refine does not take ControlNet inputs yet")
        result = generate_refined(pipe, request, args.out, args.refine)
    else:
        result = pipe.generate(request, **control)

    paths = output_paths(args.out, len(result.images))
    for i, (image, path) in enumerate(zip(result.images, paths, strict=True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, path, result.request, result.plan, index=i)
    req = result.request
    assert req.seed is not None
    seeds = str(req.seed) if len(paths) == 1 else f"{req.seed}..{req.seed + len(paths) - 1}"
    regions = len(result.plan.regions)
    print(
        f"wrote {', '.join(str(p) for p in paths)} ({req.width}x{req.height}, seed {seeds}, "
        f"{regions} region{'s' if regions != 1 else ''}, split {result.plan.to_split_ratio()}, "
        f"{result.timings.get('total', 0.0):.1f} s)"
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
