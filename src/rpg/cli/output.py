"""What the ``rpg`` command prints on stderr besides its errors.

By default: rpg's own warnings as ``rpg CMD: warning: …`` lines and the command's progress bar,
nothing else — no loading bars or log lines from diffusers, transformers or the Hugging Face hub,
no Python warnings from libraries (torchvision's image-extension warning, deprecations). With
``--verbose``: rpg's info lines too (which planner ``auto`` chose, …) and everything the
libraries say.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["command_output", "quiet_libraries"]

# Python warnings raised by rpg itself are attributed to rpg modules (stacklevel stays inside).
_RPG_MODULES = r"rpg(\..*)?$"


class _CommandHandler(logging.Handler):
    """Prints log records as ``rpg CMD: LEVEL: message`` to the current stderr."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower()
            print(f"rpg {self.command}: {level}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # pragma: no cover - logging must not raise
            self.handleError(record)


@contextmanager
def command_output(command: str, *, verbose: bool = False) -> Iterator[None]:
    """Route rpg's log records and warnings to stderr in the command's style; hide the rest.

    Everything is restored on exit, so calling :func:`rpg.cli.main` in-process (tests) leaves
    logging and the warning filters as they were.
    """
    logger = logging.getLogger("rpg")
    handler = _CommandHandler(command)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        del filename, lineno, file, line
        what = "warning" if issubclass(category, UserWarning) else category.__name__
        print(f"rpg {command}: {what}: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            if not verbose:
                warnings.simplefilter("ignore")
                warnings.filterwarnings("default", module=_RPG_MODULES)
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def quiet_libraries(*, verbose: bool = False) -> None:
    """Turn off the loading bars and log lines of diffusers, transformers and the hub.

    Called just before a model loads (those libraries are being imported then anyway).
    """
    if verbose:
        return
    modules: list[Any] = []
    try:
        from diffusers.utils import logging as diffusers_logging

        modules.append(diffusers_logging)
    except ImportError:  # pragma: no cover - a core dependency
        pass
    try:
        from transformers.utils import logging as transformers_logging

        modules.append(transformers_logging)
    except ImportError:  # pragma: no cover - a core dependency
        pass
    for module in modules:
        module.set_verbosity_error()
        module.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - a dependency of diffusers
        pass
