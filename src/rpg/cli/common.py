"""Options and model loading shared by the commands that render (``generate``, ``batch``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rpg.cli.layout import parse_size

#: The model used when ``--model`` is not given: runs offline anywhere (random weights).
DEFAULT_MODEL = "tiny-sd"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The ``model`` group: what to load, where, and whether to keep projected prompts."""
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
    model.add_argument(
        "--no-kv-cache",
        dest="kv_cache",
        action="store_false",
        help="project the prompts' keys and values at every step instead of once per render "
        "(saves their memory, about 245 MiB for SDXL with 8 regions + base in float16, and "
        "costs time; the pixels are the same)",
    )


def add_planner_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--plan``, ``--planner`` and the LLM planner options; returns the group to extend."""
    plan = p.add_argument_group("plan")
    plan.add_argument("--plan", type=Path, metavar="PLAN.json", help="use this plan, no planner")
    plan.add_argument(
        "--planner",
        help="planner name (see 'rpg plugins'); default 'auto': openai if OPENAI_API_KEY is set, "
        "else a running Ollama, else the offline 'rules' planner",
    )
    plan.add_argument("--planner-model", help="model name for LLM planners")
    plan.add_argument("--base-url", help="OpenAI-compatible server URL for the openai planner")
    plan.add_argument("--host", help="Ollama server URL for the ollama planner")
    plan.add_argument("--base-ratio", type=float, help="weight of the base prompt, 0 to 1")
    return plan


def add_render_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Size, steps, seed, guidance, negative prompt, scheduler, image count."""
    render = p.add_argument_group("rendering")
    render.add_argument("--size", type=parse_size, help="WxH, multiples of 8; default: native")
    render.add_argument("--steps", type=int, help="denoising steps (default 30)")
    render.add_argument("--seed", type=int, help="random seed (default: random, recorded)")
    render.add_argument("--guidance", type=float, help="guidance scale (default 7)")
    render.add_argument("--negative", help="negative prompt for the whole image")
    render.add_argument(
        "--scheduler",
        help="dpm++2m-karras (SD/SDXL default), euler-a, euler, ddim, ...; FLUX/SD3: default",
    )
    render.add_argument("--num-images", type=int, help="images to render (default 1)")
    dit = p.add_argument_group("FLUX and SD3 (regional joint attention)")
    dit.add_argument(
        "--true-cfg", type=float, help="FLUX: true CFG scale with --negative (default 1: off)"
    )
    dit.add_argument(
        "--image-attention",
        choices=("global", "region"),
        help="what image tokens see of the image: all of it (global, default) or their region",
    )
    dit.add_argument(
        "--regional-steps", type=float, help="fraction of the steps that are regional (default 1)"
    )
    dit.add_argument(
        "--regional-blocks", type=int, help="every k-th attention block is regional (default 1)"
    )
    return render


def request_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields set on the command line (options not given are left out)."""
    from rpg.models import RegionPlan

    fields: dict[str, Any] = {
        "steps": args.steps,
        "seed": args.seed,
        "guidance_scale": args.guidance,
        "negative_prompt": args.negative,
        "scheduler": args.scheduler,
        "num_images": args.num_images,
        "base_ratio": args.base_ratio,
        "planner": args.planner,
        "true_cfg_scale": getattr(args, "true_cfg", None),
        "image_attention": getattr(args, "image_attention", None),
        "regional_steps": getattr(args, "regional_steps", None),
        "regional_blocks": getattr(args, "regional_blocks", None),
    }
    if args.size is not None:
        fields["width"], fields["height"] = args.size
    if args.plan is not None:
        fields["plan"] = RegionPlan.load(args.plan)
    return {k: v for k, v in fields.items() if v is not None}


def planner_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the planner factory from ``--planner-model``, ``--base-url``, ``--host``."""
    pairs = (("model", args.planner_model), ("base_url", args.base_url), ("host", args.host))
    return {key: value for key, value in pairs if value is not None}


def load_rpg(
    args: argparse.Namespace,
    model: str,
    planner: str | None,
    *,
    controlnet: list[str] | None = None,
) -> Any:
    """Resolve and load ``model`` with the command-line device/dtype; returns an ``RPG``.

    With ``controlnet`` the detected backbone's ControlNet variant loads those ControlNets. Says
    on stderr when the model is a tiny random-weight one, so nobody mistakes its noise for a bug.
    """
    from rpg.backbones.loading import resolve_model
    from rpg.orchestrator import RPG, select_backbone

    info = resolve_model(model, config=args.config, allow_download=args.allow_download)
    if info.is_tiny:
        print(
            f"note: {model!r} has random weights; its images are noise (it is for trying rpg "
            "offline). Pass --model with a real checkpoint for pictures.",
            file=sys.stderr,
        )
    backbone_cls = select_backbone(info)
    options: dict[str, Any] = {}
    if controlnet:
        from rpg.backbones.controlnet import controlnet_backbone_for

        backbone_cls = controlnet_backbone_for(backbone_cls)
        options["controlnet"] = controlnet
    backbone = backbone_cls.load(
        info, device=args.device or "auto", dtype=args.dtype or "auto", **options
    )
    backbone.cache_kv = getattr(args, "kv_cache", True)
    return RPG(
        backbone,
        planner=planner or "auto",
        planner_options=planner_options(args),
        model=model,
    )
