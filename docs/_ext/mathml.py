"""Formulas as MathML, rendered when the page is built: no JavaScript, no network, no LaTeX.

Sphinx's HTML builds render math with MathJax from a CDN by default, so an offline build showed
raw TeX (``\\[\\text{out}[R_r] = …\\]``). Here the ``latex2mathml`` package (pure Python, in the
``docs`` extra) turns each formula into a ``<math>`` element, which every current browser draws
on its own. Registered as the HTML math renderer ``"mathml"`` (``html_math_renderer`` in
``conf.py``).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.application import Sphinx


def _mathml(latex: str, *, display: str) -> str:
    try:
        return convert(latex.strip(), display=display)
    except Exception as exc:  # a formula latex2mathml cannot read: fail the build, naming it
        raise ValueError(f"cannot render the formula {latex.strip()!r} as MathML: {exc}") from exc


def visit_inline(self: Any, node: nodes.math) -> None:
    self.body.append(
        f'<span class="math notranslate nohighlight">{_mathml(node.astext(), display="inline")}'
        "</span>"
    )
    raise nodes.SkipNode


def visit_block(self: Any, node: nodes.math_block) -> None:
    # A block may hold several equations separated by blank lines, as with Sphinx's renderers.
    parts = [part for part in node.astext().split("\n\n") if part.strip()]
    rendered = "".join(_mathml(part, display="block") for part in parts)
    number = node.get("number")
    label = f'<span class="eqno">({number})</span>' if number else ""
    ident = f' id="{node["ids"][0]}"' if node.get("ids") else ""
    self.body.append(f'<div class="math notranslate nohighlight"{ident}>{label}{rendered}</div>')
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_html_math_renderer("mathml", (visit_inline, None), (visit_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
