"""``rpg eval``: a prompt set over seeds, stock vs rpg, scored, written as a report folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from rpg.cli.checks import UsageError, check_output_dir, parse_key_values
from rpg.cli.layout import parse_size

_EXAMPLES = """examples:
  rpg eval shapes-heldout --model shapes-sd --out report/ --seeds 0-3
  rpg eval shapes-heldout --model shapes-sd --out ablation/ \
      --methods exact,exact:base=0,exact:base=0.6,exact:kv=off
  rpg eval shapes-heldout --model shapes-sd --out wide/ --region-size 64
  rpg eval color_val.txt --model ./my-sd15 --scorers clip,region-clip \
      --scorer-option model=openai/clip-vit-base-patch32

PROMPTS is a built-in set (shapes-heldout, shapes-single, shapes-halves), a .txt file with one
prompt per line (T2I-CompBench's form) or a .jsonl file of {"prompt", "category", "objects",
"plan"} objects.
Methods: stock (the pipeline given the whole prompt), rpg[:PLANNER] (plans by a planner,
--planner by default), exact (the set's plans); add :base=R and/or :kv=off. Running the same
command again skips the images already in OUT (results.jsonl).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from rpg.cli.common import add_model_arguments

    p = sub.add_parser(
        "eval",
        help="score stock vs rpg on a prompt set; writes an HTML report",
        description="Render a prompt set over seeds with the stock pipeline and with rpg, score "
        "every image with the chosen scorers, and write OUT/index.html (opens offline), "
        "OUT/results.jsonl and OUT/summary.csv. Resumable.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", metavar="PROMPTS", help="built-in set name, .txt or .jsonl file")
    p.add_argument("--out", type=Path, required=True, help="report folder (created; resumable)")
    p.add_argument("--seeds", default="0-3", help="seeds, e.g. 0-3 or 1,5,9 (default 0-3)")
    p.add_argument(
        "--methods", default="stock,rpg,exact", help="comma-separated (default stock,rpg,exact)"
    )
    p.add_argument("--planner", default="rules", help="planner of the 'rpg' method (default rules)")
    p.add_argument("--planner-model", help="model name for LLM planners")
    p.add_argument("--base-url", help="OpenAI-compatible server URL for the openai planner")
    p.add_argument("--host", help="Ollama server URL for the ollama planner")
    p.add_argument(
        "--scorers", default="shapes", help="comma-separated scorer names (see 'rpg plugins')"
    )
    p.add_argument(
        "--scorer-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for every scorer's factory, e.g. model=PATH (repeatable)",
    )
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, default=7.0, help="guidance scale (default 7)")
    canvas = p.add_mutually_exclusive_group()
    canvas.add_argument(
        "--size",
        type=parse_size,
        metavar="WxH",
        help="canvas of every image, multiples of 8 (default: the model's native size)",
    )
    canvas.add_argument(
        "--region-size",
        type=int,
        metavar="PX",
        help="size each prompt's canvas from its exact plan so that every region is at least PX "
        "pixels wide and high (e.g. the model's native size); stock renders the same canvas",
    )
    p.add_argument("--limit", type=int, help="only the first N prompts of the set")
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch (a shared machine: 1 is often fastest)"
    )
    add_model_arguments(p)
    p.set_defaults(run=run)


def _methods(text: str, planner: str) -> list[Any]:
    from rpg.eval.run import parse_method

    # commas separate methods, but also options of one method: "exact:base=0,kv=off"
    pieces: list[str] = []
    for chunk in text.split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        if pieces and "=" in chunk and ":" not in chunk:
            pieces[-1] += "," + chunk
        else:
            pieces.append(chunk)
    return [parse_method(p, planner) for p in pieces]


def run(args: argparse.Namespace) -> int:
    from rpg.cli.batch import parse_seeds
    from rpg.cli.common import DEFAULT_MODEL, load_rpg
    from rpg.errors import ConfigurationError
    from rpg.eval.prompts import load_prompt_set
    from rpg.eval.report import write_report
    from rpg.eval.run import run_eval
    from rpg.eval.scorers import ShapesScorer
    from rpg.eval.shapes import IMAGE_SIZE
    from rpg.plugins import scorer_registry
    from rpg.progress import NoProgress

    try:
        seeds = parse_seeds(args.seeds)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--seeds: {exc}") from None
    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    if args.size is not None and (args.size[0] % 8 or args.size[1] % 8):
        w, h = args.size
        raise UsageError(
            f"--size: {w}x{h} is not a multiple of 8; try {max(8, w // 8 * 8)}x{max(8, h // 8 * 8)}"
        )
    if args.region_size is not None and args.region_size < 8:
        raise UsageError(f"--region-size must be at least 8 pixels, got {args.region_size}")
    try:
        methods = _methods(args.methods, args.planner)
    except ConfigurationError as exc:
        raise UsageError(f"--methods: {exc}") from None
    items = load_prompt_set(args.prompts)
    if args.limit is not None:
        items = items[: args.limit]
    registry = scorer_registry()
    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    if not names:
        raise UsageError("--scorers: give at least one scorer (see 'rpg plugins')")
    for name in names:
        if name not in registry:
            raise UsageError(
                f"--scorers: unknown scorer {name!r}; registered: {', '.join(registry.names())}"
            )
    if any(m.kind == "exact" for m in methods) and any(i.plan is None for i in items):
        raise UsageError(
            "--methods exact needs a plan for every prompt: use a .jsonl prompt set with plans "
            "or a built-in shapes set, or drop 'exact'"
        )
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    check_output_dir(args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = parse_key_values(args.scorer_option, "--scorer-option")
    scorers = []
    for name in names:
        try:
            scorers.append(registry.get(name).target(**options))
        except ConfigurationError as exc:
            raise UsageError(f"--scorer-option: {exc}") from None
        except TypeError as exc:  # an option this scorer's factory does not take
            raise UsageError(
                f"--scorer-option: the {name!r} scorer does not take {', '.join(sorted(options))} "
                f"({exc}); options go to every scorer given to --scorers"
            ) from None
    pipe = load_rpg(args, args.model or DEFAULT_MODEL, args.planner)
    for scorer in scorers:
        # a model draws the shapes world at its own pixel scale on any canvas: shapes-sd's
        # objects are as large on a 128×128 canvas of four 64×64 regions as on 64×64
        if isinstance(scorer, ShapesScorer) and scorer.scale is None:
            scorer.scale = min(pipe.backbone.native_size) / IMAGE_SIZE
    pipe.progress = NoProgress()  # one bar for the whole evaluation, not one per image
    records = run_eval(
        pipe,
        items,
        seeds=seeds,
        methods=methods,
        scorers=scorers,
        out_dir=args.out,
        steps=args.steps,
        guidance_scale=args.guidance,
        width=args.size[0] if args.size else None,
        height=args.size[1] if args.size else None,
        region_size=args.region_size,
        progress=not getattr(args, "no_progress", False),
    )
    command = "rpg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    index = write_report(args.out, records, title=f"rpg eval: {args.prompts}", command=command)
    from rpg.eval.report import summarize

    for row in summarize(records):
        if row["category"] == "all":
            scores = "  ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float))
            print(f"{row['method']:<22} n={row['n']:<4} {scores}")
    print(f"report: {index}")
    return 0
