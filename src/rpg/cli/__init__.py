"""The ``rpg`` command: plan, draw, generate and inspect plugins.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``.
Errors print one line, ``rpg CMD: error: …``, and exit with status 2 for a bad command-line value
(:class:`~rpg.cli.checks.UsageError`, as argparse does) or 1 for a failure at run time;
``--debug`` (before or after the subcommand) shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from rpg import __version__
from rpg.cli.checks import UsageError, validation_message
from rpg.cli.output import command_output
from rpg.progress import close_bars

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "plan",
    "layout",
    "generate",
    "batch",
    "edit",
    "eval",
    "ui",
    "plugins",
)


def _add_general_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--debug``, ``--verbose`` and ``--no-progress``, before or after the subcommand.

    On subcommands their default is ``SUPPRESS`` so an option given before the subcommand is
    not reset by the subcommand's parser.
    """
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("general options") if not top else parser
    group.add_argument(
        "--debug",
        action="store_true",
        help="show full tracebacks instead of one-line errors",
        **default,
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="also show rpg's info lines and what libraries print (loading bars, warnings)",
        **default,
    )
    group.add_argument(
        "--no-progress",
        dest="no_progress",
        action="store_true",
        help="no progress bar (for logs and scripts)",
        **default,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpg",
        description="Recaption, Plan, Generate: an LLM plans regions of the canvas, a stock "
        "diffusers pipeline renders them with regional cross-attention.",
        epilog="Run 'rpg COMMAND --help' for a command's options. Exit status: 0 done, "
        "1 failed, 2 bad usage (the message names the option).",
    )
    parser.add_argument("--version", action="version", version=f"rpg {__version__}")
    _add_general_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rpg.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not built yet
            if exc.name != f"rpg.cli.{name}":
                raise
            continue
        module.add_parser(sub)
        _add_general_options(sub.choices[name], top=False)
    return parser


def format_error(exc: BaseException) -> str:
    """One line that says what went wrong, for any error a user can cause."""
    if isinstance(exc, ValidationError):
        return f"invalid {exc.title}: {validation_message(exc)}"
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rpg`` command; returns the exit status (0 done, 1 failed, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    with command_output(args.command, verbose=args.verbose):
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:
            close_bars()
            print(f"rpg {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            close_bars()  # the error starts on its own line, not after a progress bar
            if args.debug:
                traceback.print_exc()
            else:
                print(f"rpg {args.command}: error: {format_error(exc)}", file=sys.stderr)
            return 2 if isinstance(exc, UsageError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
