"""Sphinx configuration: MyST Markdown pages, API reference from docstrings, offline build.

Nothing is fetched at build time or when a page is read: no intersphinx, a theme installed from
PyPI, no web fonts, formulas rendered to MathML while building (no MathJax from a CDN).
The CLI reference and the layout pictures are generated from rpg itself (``_ext/rpg_docs.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import rpg  # noqa: E402

project = "rpg"
author = "rpg developers"
copyright = "rpg developers, Apache-2.0"
release = rpg.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "rpg_docs",
    "mathml",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "conftest.py", "**/.pytest_cache"]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath"]
myst_heading_anchors = 3
# Formulas become MathML at build time (_ext/mathml.py): rendered offline, without JavaScript.
html_math_renderer = "mathml"

# Every warning is an error (``-W`` in ``nox -s docs``); unresolved cross-references are not
# checked against other projects, since the build must not fetch intersphinx inventories.
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"rpg {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
