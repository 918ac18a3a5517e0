"""``rpg ui``: serve the plan editor (:mod:`rpg.ui`) on a local address, with one loaded model.

Everything that can be wrong with the command line (a busy port, a bad ``--host``, an
``--out`` that cannot be written, a malformed ``--allow-origin``) is found before the model
loads; see :mod:`rpg.ui.serve`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rpg.cli.checks import UsageError
from rpg.cli.common import DEFAULT_MODEL, add_model_arguments, load_rpg
from rpg.errors import ConfigurationError
from rpg.planners.base import DEFAULT_PLANNER

__all__ = ["add_parser", "run"]

_EXAMPLES = """examples:
  rpg ui                                   # tiny-sd (random weights, offline), rules planner
  rpg ui --model ./my-sd15-folder --planner openai --port 8000
  rpg ui --out ~/rpg-images                # keep every rendered PNG in a folder
  rpg ui --host 0.0.0.0 --allow-origin http://mybox.local:7860   # other computers too

The app answers only pages it served itself, on a loopback name or the --host address.
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
        # Options must be spelled out: "--h 0.0.0.0" must not open the app to the network.
        allow_abbrev=False,
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
    plan.add_argument(
        "--ollama-host",
        metavar="URL",
        help="Ollama server URL for the ollama planner (default: $OLLAMA_HOST or localhost); "
        "--host is this app's own address",
    )
    plan.add_argument(
        "--plan-timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="time limit of one planner call, loading included (default 180)",
    )
    server = p.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only). The app has no "
        "login: another address (0.0.0.0: every interface) lets anyone who can reach it render "
        "and read your images; rpg ui warns when it does",
    )
    server.add_argument(
        "--port", type=int, default=7860, help="port (default 7860; 0: any free port)"
    )
    server.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="also answer pages served from this origin, scheme://host[:port] (a reverse proxy, "
        "a name on your network); repeat for more",
    )
    server.add_argument(
        "--out",
        type=Path,
        metavar="FOLDER",
        help="keep every rendered PNG in FOLDER (default: a temporary folder, removed at exit)",
    )
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    from rpg.ui.guard import normalize_origin

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    if not args.plan_timeout > 0:  # also refuses NaN
        raise UsageError(
            f"--plan-timeout must be a positive number of seconds, got {args.plan_timeout}"
        )
    for origin in args.allow_origin:
        try:
            normalize_origin(origin)
        except ValueError as exc:
            raise UsageError(f"--allow-origin: {exc}") from None


def _planner_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options ``load_rpg`` gives the default planner, with ``--ollama-host`` applied.

    Any planner can be picked in the page, but ``RPG`` passes options to its default planner
    only, so the Ollama address also goes to ``$OLLAMA_HOST``, which every ollama planner (and
    ``auto``) made later reads. As a planner option it goes to the ``ollama`` planner only (the
    others take no ``host``); ``args.host`` here is the app's own address, never the Ollama
    server.
    """
    if args.ollama_host:
        os.environ["OLLAMA_HOST"] = args.ollama_host
    host = args.ollama_host if args.planner == "ollama" else None
    # Both spellings: load_rpg has read args.host, and reads args.ollama_host once the other
    # commands name the Ollama server --ollama-host too.
    return argparse.Namespace(**{**vars(args), "host": host, "ollama_host": host})


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401  (imported here to fail before anything else)

        from rpg.ui.app import build_app
        from rpg.ui.serve import (
            bind,
            exposure_warning,
            force_remove,
            prepare_output_dir,
            remove_created,
            second_interrupt_exits,
            serve,
        )
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"rpg ui needs {exc.name}: pip install 'rpg-diffusion[ui]'"
        ) from None
    _check_args(args)
    sock = bind(args.host, args.port)  # before the model loads: a busy port is said at once
    created: list[Path] = []
    try:
        with second_interrupt_exits():
            if args.out is not None:
                created = prepare_output_dir(args.out)
            planner_args = _planner_args(args)
            pipe = load_rpg(planner_args, args.model or DEFAULT_MODEL, args.planner)
    except BaseException as exc:
        sock.close()
        remove_created(created)
        if isinstance(exc, KeyboardInterrupt):
            # Interrupted while loading: leave now rather than spend seconds tearing down
            # torch, during which Python resets its Ctrl-C handler.
            print("rpg ui: interrupted", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        raise
    with sock, tempfile.TemporaryDirectory(prefix="rpg-ui-") as tmp:
        out = args.out if args.out is not None else Path(tmp)
        app = build_app(
            pipe,
            output_dir=out,
            planner=args.planner or DEFAULT_PLANNER,
            bind_host=args.host,
            allow_origins=args.allow_origin,
            plan_timeout=args.plan_timeout,
        )
        model = pipe.model or args.model or DEFAULT_MODEL
        port = int(sock.getsockname()[1])
        warning = exposure_warning(args.host, port, model, str(out))
        if warning is not None:
            print(f"rpg ui: warning: {warning}", file=sys.stderr, flush=True)

        def announce(url: str) -> None:
            print(
                f"rpg ui: serving {model} on {url} (Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )

        status = serve(
            app,
            sock,
            on_stop=app.state.rpg.stop,
            on_force_exit=lambda: force_remove(None if args.out is not None else Path(tmp)),
            announce=announce,
        )
    if status:
        # Stopped by Ctrl-C: the server is down and the temporary folder removed. Tearing the
        # interpreter down (torch, the render thread) takes seconds more, for nothing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
