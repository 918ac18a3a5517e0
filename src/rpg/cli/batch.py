"""``rpg batch``: render a JSONL file of requests with one loaded model; resumable."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.cli.checks import check_output_dir, check_scheduler_flag, validate_request
from rpg.cli.common import (
    DEFAULT_MODEL,
    add_model_arguments,
    add_planner_arguments,
    add_render_arguments,
    check_loading,
    load_rpg,
    planner_options,
    prepare_planner,
    request_overrides,
)
from rpg.cli.lora_flags import add_lora_arguments, check_lora_flags, lora_overrides
from rpg.errors import ConfigurationError
from rpg.planners.base import DEFAULT_PLANNER
from rpg.stopping import stop_on_sigint

if TYPE_CHECKING:
    from rpg.batch import BatchItem, BatchReport

_EXAMPLES = """examples:
  rpg batch requests.jsonl --out out/ --seeds 1,2,3
  rpg batch requests.jsonl --out out/ --plan plan.json --model ./my-sd15-folder

Each line of REQUESTS.jsonl is a JSON object with GenerationRequest fields (only "prompt" is
required) or a bare JSON string prompt. Options given here are defaults that a line overrides,
except --seeds, which replaces every line's seed. A line without a seed (and no --seed or
--seeds) gets a random one, as 'rpg generate' does; it is recorded in the manifest and the PNG,
and a resumed run uses it again. One model per batch: --model (default tiny-sd); a line may
repeat it, and a line that names another model stops the batch before anything loads.
A line may name its own "planner" and give it
"planner_options" (e.g. {"planner": "ollama", "planner_options": {"model": "qwen2.5:7b"}}).
Running the same command again skips finished items (see OUT/manifest.jsonl): an item is
finished when a run with exactly the same settings wrote its files.

ControlNet: give lines "controls": [{"controlnet": "tiny-controlnet", "image": "edges.png",
"scale": 0.7}] (control image paths are relative to the current folder). The ControlNets are
loaded once, so every line of a batch must name the same ControlNets, or none.

LoRA: give lines "loras": ["style.safetensors:0.8"] (or [{"name": ..., "scale": ...}]), and
regions their own "loras" in a plan; --lora sets the LoRAs of lines that name none. LoRAs are
loaded per image, so lines may differ. Paths are relative to the current folder.
"""


def parse_seeds(text: str) -> list[int]:
    """``1,2,3`` or ``0-7`` (inclusive) into a list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must look like 1,2,3 or 0-7, got {text!r}"
        ) from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError("seeds must not be negative")
    return seeds


def batch_controlnets(items: Sequence[BatchItem]) -> list[str] | None:
    """The ControlNets the batch's lines name (one set for the whole batch), or ``None``.

    One model is loaded for the whole batch, and a ControlNet model cannot render without a
    control image, so lines that name other ControlNets, or none while others do, are refused
    before anything is loaded rather than failing one by one.
    """
    sets: dict[tuple[str, ...], list[int]] = {}
    for item in items:
        if item.request is not None:
            names = tuple(c.controlnet for c in item.request.controls)
            lines = sets.setdefault(names, [])
            if item.line not in lines:
                lines.append(item.line)
    controlled = [names for names in sets if names]
    if not controlled:
        return None

    def where(names: tuple[str, ...]) -> str:
        lines = sets[names]
        shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
        what = ", ".join(names) if names else "no ControlNet"
        return f"{what} (line{'s' if len(lines) > 1 else ''} {shown})"

    if len(sets) > 1:
        raise ConfigurationError(
            "a batch loads one set of ControlNets for every line, but the lines ask for "
            f"{'; '.join(where(names) for names in sets)}; split them into one file per set"
        )
    return list(controlled[0])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model (paths compared resolved)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def batch_model(items: Sequence[BatchItem], given: str | None) -> str:
    """The one model a batch loads: ``--model``, else the default; lines may only repeat it.

    The rule is the same as for every other option (an option is a default a line may
    override), except that one model is loaded for the whole batch: a line that names another
    model cannot be honoured, so it is refused before anything loads. A line's model never
    becomes the model of the other lines.
    """
    model = given or DEFAULT_MODEL
    others: dict[str, list[int]] = {}
    for item in items:
        named = item.request.model if item.request is not None else None
        if named is not None and not _same_model(named, model):
            lines = others.setdefault(named, [])
            if item.line not in lines:
                lines.append(item.line)
    if others:
        asked = "; ".join(
            f"{name} (line{'s' if len(lines) > 1 else ''} "
            f"{', '.join(map(str, sorted(lines)[:5]))}{', ...' if len(lines) > 5 else ''})"
            for name, lines in others.items()
        )
        how = (
            "split them into one file per model"
            if given
            else f"pass --model {next(iter(others))} if every line should use it, or split the "
            "file into one per model"
        )
        raise ConfigurationError(
            f"a batch renders with one model, --model ({model}"
            f"{'' if given else ', the default'}), but lines ask for {asked}; {how}"
        )
    return model


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batch",
        help="render many requests from a JSONL file (resumable)",
        description="Render every line of a JSONL file of requests with one loaded model. Each "
        "distinct prompt is planned once and reused across seeds; a manifest records every "
        "item, so an interrupted run resumes where it stopped.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("requests", type=Path, metavar="REQUESTS.jsonl", help="one request per line")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--seeds", type=parse_seeds, help="render every line with each seed")
    add_model_arguments(p)
    add_lora_arguments(p, batch=True)
    add_planner_arguments(p)
    add_render_arguments(p)
    ray = p.add_argument_group("ray (pip install 'rpg-diffusion[ray]')")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="render on a Ray cluster: one loaded model per worker, same manifest and resume",
    )
    ray.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="the cluster to join (auto, ray://HOST:10001, or local for a new one-machine "
        "instance); default: RAY_ADDRESS, else a cluster started here with 'ray start', else a "
        "new local instance",
    )
    ray.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="render workers (default: one per GPU in the cluster, else one); each loads the "
        "model once and takes one GPU when the cluster has GPUs",
    )
    p.set_defaults(run=run)


def ray_model_spec(args: argparse.Namespace, model: str, controlnet: list[str] | None) -> Any:
    """What each Ray worker loads, from the same options the local engine loads with."""
    from rpg.batch_ray import ModelSpec

    return ModelSpec(
        model=model,
        device=args.device or "auto",
        dtype=args.dtype or "auto",
        config=args.config,
        allow_download=args.allow_download,
        controlnet=tuple(controlnet or ()),
        kv_cache=args.kv_cache,
        planner=args.planner or DEFAULT_PLANNER,
        planner_options=planner_options(args),
    )


def _run_on_ray(args: argparse.Namespace, defaults: dict[str, Any]) -> BatchReport:
    """Ray Data reads the file; the driver checks the lines that name a model or ControlNets
    (as the local engine checks them all) before any worker loads the model."""
    from rpg.batch_ray import run_ray_batch

    def check(named: Sequence[BatchItem]) -> Any:
        model = batch_model(named, args.model)
        return ray_model_spec(args, model, batch_controlnets(named))

    return run_ray_batch(
        ray_model_spec(args, args.model or DEFAULT_MODEL, None),
        args.requests,
        args.out,
        defaults=defaults,
        seeds=args.seeds,
        progress=not args.no_progress,
        address=args.ray_address,
        workers=args.workers,
        check=check,
    )


def run(args: argparse.Namespace) -> int:
    if (args.ray_address or args.workers) and not args.ray:
        raise ConfigurationError("--ray-address and --workers go with --ray")
    from rpg.batch import MANIFEST_NAME, DrawnSeeds, expand_requests, read_requests, run_batch
    from rpg.progress import NoProgress

    if not args.requests.is_file():
        raise ConfigurationError(f"{args.requests}: requests file not found")
    check_output_dir(args.out)
    defaults = {**request_overrides(args), **lora_overrides(args)}
    model = args.model or DEFAULT_MODEL
    # The options are the defaults of every line: check them like one request, by flag.
    validate_request({"prompt": "-", "model": model, **defaults}, from_flags=set(defaults))
    if args.scheduler is not None:
        check_scheduler_flag(args.scheduler, given=True)
    options = planner_options(args)
    if options:
        defaults["planner_options"] = options
    if args.ray:
        report = _run_on_ray(args, defaults)
    else:
        lines = read_requests(args.requests)
        if not lines:
            raise ConfigurationError(f"{args.requests}: has no requests")
        # --plan stays in every line's request, so the resume key covers it
        listed = expand_requests(lines, defaults=defaults, seeds=args.seeds)
        model = batch_model(listed, args.model)
        controlnet = batch_controlnets(listed)
        for item in listed:  # LoRA files are there (and unchanged) before the model loads
            if item.request is not None:
                check_lora_flags(item.request)
        check_loading(args, model, controlnet)
        # every request records the model the batch loads, and is keyed by it; lines without
        # a seed draw one, the same one again when the batch resumes in OUT
        items = expand_requests(
            lines,
            defaults={**defaults, "model": model},
            seeds=args.seeds,
            drawn=DrawnSeeds(args.out),
        )
        unplanned = any(item.request is not None and item.request.plan is None for item in items)
        planner = prepare_planner(args, args.planner) if unplanned else None
        with stop_on_sigint("rpg batch") as interrupts:
            pipe = load_rpg(args, model, planner, controlnet=controlnet)
            pipe.progress = NoProgress()  # one bar over the items, not one per image
            # Ctrl-C stops the item being rendered within one layer; finished items are kept.
            with interrupts.render(pipe):
                report = run_batch(pipe, items, args.out, progress=not args.no_progress)
    for record in report.records:
        if record.get("status") == "error":
            seed = f", seed {record['seed']}" if record.get("seed") is not None else ""
            where = f"line {record.get('line')}"
            error = str(record.get("error")).removeprefix(f"{where}: ")
            print(f"rpg batch: error: {where}{seed}: {error}", file=sys.stderr)
    print(f"{report.summary()}; manifest: {args.out / MANIFEST_NAME}")
    return 1 if report.failed else 0
