"""The docs' formulas render in an offline build: MathML made at build time, no raw TeX."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")
pytest.importorskip("latex2mathml")


def _formulas(page: Path) -> list[str]:
    return re.findall(r"^\$\$\n(.*?)\n\$\$$", page.read_text(encoding="utf-8"), re.S | re.M)


def test_docs_conf_renders_math_with_the_bundled_renderer() -> None:
    conf = (DOCS / "conf.py").read_text(encoding="utf-8")
    assert re.search(r'^html_math_renderer = "mathml"$', conf, re.M)
    assert '"mathml",' in conf


def test_the_regional_attention_formulas_build_to_mathml(tmp_path: Path) -> None:
    """The page's own formulas, built by Sphinx with the docs' renderer and no network."""
    from sphinx.application import Sphinx

    formulas = _formulas(DOCS / "concepts" / "regional-attention.md")
    formulas += _formulas(DOCS / "concepts" / "plan.md")
    assert len(formulas) >= 3
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        'extensions = ["myst_parser", "mathml"]\n'
        'myst_enable_extensions = ["dollarmath", "amsmath"]\n'
        'html_math_renderer = "mathml"\n'
    )
    body = "\n\n".join(f"$$\n{f}\n$$" for f in formulas)
    (src / "index.md").write_text(f"# Formulas\n\nInline $\\beta_r$ too.\n\n{body}\n")
    app = Sphinx(str(src), str(src), str(tmp_path / "html"), str(tmp_path / "doctrees"), "html",
                 status=None, warningiserror=True)  # fmt: skip
    app.build()
    html = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert html.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">') == len(
        formulas
    )
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">' in html
    assert "\\[" not in html and "\\text" not in html and "$$" not in html
    assert not re.search(r"<script[^>]*mathjax", html, re.I)  # nothing to fetch from a CDN
    assert "<mtext>Attn</mtext>" in html
