"""Sphinx extension: pages and pictures generated from rpg itself when the docs build.

* ``reference/cli.md`` is written from :func:`rpg.cli.build_parser` before Sphinx reads the
  sources, so the CLI reference always lists the options the installed ``rpg`` has.
* The ``rpg-layout`` directive runs ``rpg plan --json`` and ``rpg layout`` (the real command-line
  entry point, in process) and shows the picture ``rpg layout`` draws. Pictures are written
  under ``_generated/`` at build time; none is committed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.directives.other import TocTree
from sphinx.util.docutils import SphinxDirective

GENERATED = "_generated"


def _run_rpg(argv: list[str]) -> str:
    """Run the ``rpg`` command in process; its stdout, or an error naming the command."""
    from rpg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"'rpg {shlex.join(argv)}' failed ({code}): {err.getvalue().strip()}")
    return out.getvalue()


# --------------------------------------------------------------------------- layout pictures


class RpgLayout(SphinxDirective):
    """Draw a plan with ``rpg layout``: a hand-written split ratio, or a prompt the rules planner
    plans. Options: ``split-ratio`` + ``prompts`` (``BREAK``-separated), ``base-prompt``,
    ``base-ratio``; or ``prompt``; and ``size`` (``WxH``), ``alt``.

    A canvas: ``layers``, one per line (bottom to top), ``box X0,Y0,X1,Y1 = PROMPT`` or
    ``ellipse X0,Y0,X1,Y1[~SOFT] = PROMPT`` (a mask layer: an ellipse in that box, with an
    optional soft edge), with ``base-prompt``/``base-ratio``."""

    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {
        "split-ratio": directives.unchanged,
        "prompts": directives.unchanged,
        "base-prompt": directives.unchanged,
        "base-ratio": directives.unchanged,
        "prompt": directives.unchanged,
        "layers": directives.unchanged,
        "size": directives.unchanged,
        "alt": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        opts = self.options
        canvas = None
        if "layers" in opts:
            try:
                canvas = _canvas_plan(opts)
            except Exception as exc:
                raise self.error(f"rpg-layout :layers: {exc}") from None
            argv = ["canvas", canvas]
        elif "split-ratio" in opts:
            argv = ["plan", "--split-ratio", opts["split-ratio"], "--prompts", opts["prompts"]]
            if "base-prompt" in opts:
                argv += ["--base-prompt", opts["base-prompt"]]
            if "base-ratio" in opts:
                argv += ["--base-ratio", opts["base-ratio"]]
        elif "prompt" in opts:
            argv = ["plan", opts["prompt"], "--planner", "rules", "--no-cache"]
        else:
            raise self.error("rpg-layout needs :split-ratio: and :prompts:, or :prompt:")
        argv.append("--json")
        size = opts.get("size", "480x320")
        key = hashlib.sha256(json.dumps([argv, size]).encode()).hexdigest()[:16]
        folder = Path(self.env.srcdir) / GENERATED / "layouts"
        folder.mkdir(parents=True, exist_ok=True)
        plan_file, picture = folder / f"{key}.json", folder / f"{key}.png"
        try:
            plan_file.write_text(canvas or _run_rpg(argv), encoding="utf-8")
            _run_rpg(["layout", str(plan_file), "--out", str(picture), "--size", size])
        except Exception as exc:
            raise self.error(str(exc)) from None
        alt = opts.get("alt") or (
            "rpg layout of a canvas plan" if canvas else f"rpg layout of {shlex.join(argv[1:-1])}"
        )
        image = nodes.image(uri=f"/{GENERATED}/layouts/{key}.png", alt=alt)
        image["classes"].append("rpg-layout")
        return [image]


def _canvas_plan(opts: dict[str, Any]) -> str:
    """The JSON of a canvas plan written as ``layers`` lines (see :class:`RpgLayout`)."""
    import numpy as np

    from rpg.models import DEFAULT_BASE_RATIO, Layer, LayerMask, RegionPlan

    layers = []
    for line in opts["layers"].strip().splitlines():
        shape, _, prompt = line.partition("=")
        kind, _, numbers = shape.strip().partition(" ")
        numbers, _, soft = numbers.partition("~")
        x0, y0, x1, y1 = (float(v) for v in numbers.split(","))
        if kind == "box":
            layers.append(Layer(prompt=prompt.strip(), box=(x0, y0, x1, y1)))
        elif kind == "ellipse":
            yy, xx = np.mgrid[0:200, 0:200] / 200
            inside = ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + (
                (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
            ) ** 2 <= 1
            mask = LayerMask.from_image(inside, soft_edge=float(soft or 0))
            layers.append(Layer(prompt=prompt.strip(), mask=mask))
        else:
            raise ValueError(f"a layer line starts with 'box' or 'ellipse', got {line!r}")
    plan = RegionPlan(
        layers=layers,
        base_prompt=opts.get("base-prompt"),
        base_ratio=float(opts.get("base-ratio", DEFAULT_BASE_RATIO)),
    )
    return plan.model_dump_json()


# --------------------------------------------------------------------------- extra pages


class ExtraPages(TocTree):
    """A toctree of the pages at the top of ``docs/`` other than the index (``ray.md`` ...).

    Pages that colleagues add next to ``index.md`` join the table of contents without an edit
    here, and with none there the directive renders nothing (an empty glob would be a warning).
    """

    def run(self) -> list[nodes.Node]:
        here = self.env.docname
        pages = sorted(d for d in self.env.found_docs if "/" not in d and d != here)
        if not pages:
            return []
        self.content = StringList(pages, source=self.env.doc2path(here))
        return super().run()


# --------------------------------------------------------------------------- pydantic fields


def _field_lines(model: type) -> list[str]:
    """``py:attribute`` entries for a pydantic model's fields, from their ``Field`` metadata."""
    from pydantic_core import PydanticUndefined
    from sphinx.util.typing import stringify_annotation

    lines: list[str] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        if info.exclude and not info.description:
            continue
        lines += ["", f".. py:attribute:: {name}"]
        if info.annotation is not None:
            lines.append(f"   :type: {stringify_annotation(info.annotation, 'smart')}")
        if info.default is not PydanticUndefined:
            lines.append(f"   :value: {info.default!r}")
        elif info.default_factory is not None:
            lines.append(f"   :value: {info.default_factory()!r}")  # type: ignore[call-arg]
        lines += ["", f"   {' '.join((info.description or '').split())}"]
        if info.is_required():
            lines[-1] += " *Required.*"
    return lines


def _add_model_fields(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Document every field of a pydantic model under its class, with type and default."""
    from pydantic import BaseModel

    if what == "class" and isinstance(obj, type) and issubclass(obj, BaseModel):
        lines += _field_lines(obj)


# --------------------------------------------------------------------------- CLI reference

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|$#"})


def _md(text: str) -> str:
    return " ".join(text.split()).translate(_MD_SPECIAL)


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    return f"{names} {metavar}"


def _default(action: argparse.Action) -> str:
    default = action.default
    if action.nargs == 0 or default in (None, argparse.SUPPRESS) or default == []:
        return ""
    if isinstance(default, tuple) and len(default) == 2:  # sizes are parsed to (w, h)
        return f"{default[0]}x{default[1]}"
    return str(default)


def _options_table(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[str]:
    rows = ["| option | meaning | default |", "| --- | --- | --- |"]
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        default = _default(action)
        # argparse's own expansion: %(default)s, %% ...
        meaning = parser._get_formatter()._expand_help(action) if action.help else ""
        rows.append(
            f"| `{_invocation(action)}` | {_md(meaning)} | "
            f"{'`' + default + '`' if default else ''} |"
        )
    return rows if len(rows) > 2 else []


def _command_section(name: str, parser: argparse.ArgumentParser, level: str) -> list[str]:
    lines = [f"{level} `{name}`", ""]
    if parser.description:
        lines += [_md(parser.description), ""]
    usage = parser.format_usage().strip()
    lines += ["```text", usage, "```", ""]
    for group in parser._action_groups:
        table = _options_table(parser, group._group_actions)
        if not table:
            continue
        title = group.title or "options"
        lines += [f"**{_md(title)}**", "", *table, ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip("\n"), "```", ""]
    return lines


def cli_reference() -> str:
    """The CLI reference page, as MyST Markdown, from the parser ``rpg`` itself uses."""
    from rpg.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from `rpg.cli.build_parser()` each time the docs are built, so it lists "
        "exactly the commands and options of this version. `rpg COMMAND --help` prints the "
        "same.",
        "",
        *_command_section("rpg", parser, "##")[2:],
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        lines += _command_section(f"rpg {name}", subparser, "##")
    return "\n".join(lines).rstrip() + "\n"


def _write_generated_pages(app: Sphinx) -> None:
    target = Path(app.srcdir) / "reference" / "cli.md"
    # argparse wraps usage lines at the terminal's width; make the page the same everywhere
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        text = cli_reference()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("rpg-layout", RpgLayout)
    app.add_directive("rpg-extra-pages", ExtraPages)
    app.connect("builder-inited", _write_generated_pages)
    app.connect("autodoc-process-docstring", _add_model_fields)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
