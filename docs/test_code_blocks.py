"""Every fenced block in the docs is one the doc tests know how to check.

``conftest.py`` runs ``python`` and ``bash`` blocks and parses ``json`` and ``toml`` ones; ``text``
blocks are output and diagrams, and ``{directive}`` fences are Sphinx directives. A block in any
other language (or none) would be silently unchecked, so it fails here instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from conftest import SKIP_MARKER

HERE = Path(__file__).parent
CHECKED = {"python", "bash", "json", "toml"}
DISPLAY_ONLY = {"text"}
PAGES = sorted(
    p for p in HERE.rglob("*.md") if not {"_build", "_generated"} & set(p.relative_to(HERE).parts)
)


def _fences(path: Path) -> list[tuple[int, str, str]]:
    """``(line, language, first line of the code)`` of every fenced block."""
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    return [
        (t.map[0] + 1 if t.map else 0, t.info.strip().split(" ", 1)[0], t.content.split("\n")[0])
        for t in tokens
        if t.type == "fence"
    ]


def test_the_pages_are_found() -> None:
    names = {p.relative_to(HERE).as_posix() for p in PAGES}
    assert {"index.md", "start/getting-started.md", "guides/plugins.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(HERE).as_posix())
def test_every_code_block_has_a_checked_language(page: Path) -> None:
    unchecked = [
        f"{page.name}:{line}: {language or '(no language)'}"
        for line, language, _ in _fences(page)
        if language not in CHECKED | DISPLAY_ONLY and not language.startswith("{")
    ]
    assert not unchecked, "blocks the doc tests would not check: " + "; ".join(unchecked)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(HERE).as_posix())
def test_skip_markers_are_spelled_so_that_they_skip(page: Path) -> None:
    # "# not run in CI as a block" would not match the marker, and the block would run
    misspelled = [
        f"{page.name}:{line}: {first}"
        for line, _, first in _fences(page)
        if "not run in ci" in first.lower() and not SKIP_MARKER.match(first)
    ]
    assert not misspelled, "write '# not run in CI: REASON': " + "; ".join(misspelled)
