"""The ``rpg`` command: plan, draw, generate and inspect plugins.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``.
Errors print one line and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from pydantic import ValidationError

from rpg import __version__

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("plan", "layout", "generate", "batch", "edit", "ui", "plugins")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpg",
        description="Recaption, Plan, Generate: an LLM plans regions of the canvas, a stock "
        "diffusers pipeline renders them with regional cross-attention.",
        epilog="Run 'rpg COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"rpg {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rpg.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not built yet
            if exc.name != f"rpg.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def format_error(exc: BaseException) -> str:
    """One line that says what went wrong, for any error a user can cause."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or exc.title
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg}")
        return f"invalid {exc.title}: " + "; ".join(parts)
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("rpg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"rpg {args.command}: error: {format_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
