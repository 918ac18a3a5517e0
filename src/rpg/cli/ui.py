"""``rpg ui``: serve the plan editor (:mod:`rpg.ui`) on a local address, with one loaded model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rpg.cli.common import DEFAULT_MODEL, add_model_arguments, load_rpg
from rpg.errors import ConfigurationError
from rpg.planners.base import DEFAULT_PLANNER

__all__ = ["add_parser", "run"]

_EXAMPLES = """examples:
  rpg ui                                   # tiny-sd (random weights, offline), rules planner
  rpg ui --model ./my-sd15-folder --planner openai --port 8000
  rpg ui --out ~/rpg-images                # keep every rendered PNG in a folder
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ui",
        help="plan, edit and render in the browser",
        description="Start a local web app with one loaded model: plan a prompt, reshape the "
        "regions on a canvas, render with live progress, and reopen any PNG rpg made. Needs the "
        "'ui' extra: pip install 'rpg-diffusion[ui]'.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    plan = p.add_argument_group("plan")
    plan.add_argument(
        "--planner",
        help="planner selected when the page opens (any registered one can be picked there); "
        f"default {DEFAULT_PLANNER!r}, the same as rpg generate",
    )
    plan.add_argument("--planner-model", help="model name for LLM planners")
    plan.add_argument("--base-url", help="OpenAI-compatible server URL for the openai planner")
    plan.add_argument("--ollama-host", help="Ollama server URL for the ollama planner")
    server = p.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only; the app has no login, "
        "so think twice before 0.0.0.0)",
    )
    server.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    server.add_argument(
        "--out",
        type=Path,
        metavar="FOLDER",
        help="keep every rendered PNG in FOLDER (default: a temporary folder, removed at exit)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from rpg.ui.app import build_app
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"rpg ui needs {exc.name}: pip install 'rpg-diffusion[ui]'"
        ) from None
    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port must be from 1 to 65535, got {args.port}")
    # load_rpg reads the Ollama address from args.host, which here is the server's own address.
    planner_args = argparse.Namespace(**{**vars(args), "host": args.ollama_host})
    pipe = load_rpg(planner_args, args.model or DEFAULT_MODEL, args.planner)
    app = build_app(pipe, output_dir=args.out, planner=args.planner or DEFAULT_PLANNER)
    print(
        f"rpg ui: serving {pipe.model} on http://{args.host}:{args.port}/ (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
