"""Run every code block of the docs with Sybil, so the docs cannot drift from the code.

``python`` blocks run in order in one namespace per page; ``bash`` blocks run with
``bash -euo pipefail``; both in a fresh temporary folder per page, offline, with a clean rpg cache
and no LLM configured (so ``auto`` plans with ``rules``). ``toml`` and ``json`` blocks must parse.
A block whose first line is ``# not run in CI: REASON`` is reported as skipped with that reason —
readers see the same line.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sybil import Example, Sybil
from sybil.parsers.myst import CodeBlockParser

SKIP_MARKER = re.compile(r"^\s*#\s*not run in CI:\s*(?P<reason>\S.*)$")

_CACHE = Path(tempfile.mkdtemp(prefix="rpg-docs-cache-"))
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

#: The environment every block runs in: offline, a private rpg cache, no LLM service configured.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RPG_CACHE_DIR": str(_CACHE),
    "OLLAMA_HOST": "http://127.0.0.1:9",  # nothing listens: auto falls through to rules at once
    "NO_COLOR": "1",
}
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)
os.environ.update(OFFLINE_ENV)
# `rpg` and `python` in bash blocks are this interpreter's environment's.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


def _skip_if_marked(example: Example) -> None:
    first = str(example.parsed).lstrip("\n").split("\n", 1)[0]
    match = SKIP_MARKER.match(first)
    if match:
        pytest.skip(f"{_where(example)}: {match.group('reason')}")


def _where(example: Example) -> str:
    return f"{Path(example.path).relative_to(Path(__file__).parent)}:{example.line}"


def run_python(example: Example) -> None:
    code = str(example.parsed)
    _skip_if_marked(example)
    # Pad so that tracebacks show the line numbers of the Markdown file.
    source = "\n" * example.line + code
    exec(compile(source, str(example.path), "exec"), example.namespace)


def run_bash(example: Example) -> None:
    code = str(example.parsed)
    _skip_if_marked(example)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=example.namespace["__cwd__"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"bash block at {_where(example)} exited with {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )


def parse_json(example: Example) -> None:
    json.loads(str(example.parsed))


def parse_toml(example: Example) -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    tomllib.loads(str(example.parsed))


def _enter_folder(namespace: dict[str, Any]) -> None:
    folder = tempfile.mkdtemp(prefix="rpg-docs-page-")
    namespace["__cwd__"] = folder
    namespace["__previous_cwd__"] = os.getcwd()
    namespace["__name__"] = "docs_page"
    os.chdir(folder)


def _leave_folder(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["__previous_cwd__"])
    shutil.rmtree(namespace["__cwd__"], ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[
        CodeBlockParser(language="python", evaluator=run_python),
        CodeBlockParser(language="bash", evaluator=run_bash),
        CodeBlockParser(language="json", evaluator=parse_json),
        CodeBlockParser(language="toml", evaluator=parse_toml),
    ],
    patterns=["*.md"],
    excludes=["_build/*", "_generated/*"],
    setup=_enter_folder,
    teardown=_leave_folder,
).pytest()
