"""Running ``rpg generate`` in a test and reading how it refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpg.cli import main


def generate_refusal(flags: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, bool]:
    """``rpg generate "a cat" FLAGS --out x.png`` in the current folder: its exit code (argparse's
    own type errors exit through ``SystemExit``), its stderr, and whether ``x.png`` was written."""
    try:
        code = main(["generate", "a cat", *flags, "--out", "x.png", "--no-progress"])
    except SystemExit as stop:
        code = stop.code
    return int(code or 0), capsys.readouterr().err, Path("x.png").exists()
