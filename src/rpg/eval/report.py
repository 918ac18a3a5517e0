"""The report folder of ``rpg eval``: ``summary.csv`` and an ``index.html`` that opens offline.

The page has no scripts and no external resources: the summary table, one bar chart per metric
(inline SVG, a group of bars per category, one bar per method) and, per prompt and seed, the
images of every method side by side with the rendered plan's regions drawn over them.
"""

from __future__ import annotations

import csv
import html
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["summarize", "write_report"]

_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac"]
ALL = "all"


def _order(values: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every score per (method, category), and per method over all categories.

    Rows: ``{"method", "category", "n", <metric>: mean, ...}``, methods and categories in the
    order they first appear; the category ``"all"`` pools every image of a method.
    """
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["category"])].append(r["scores"])
        groups[(r["method"], ALL)].append(r["scores"])
    metrics = _order([k for r in records for k in r["scores"]])
    rows = []
    for method in _order([r["method"] for r in records]):
        for category in [*_order([r["category"] for r in records]), ALL]:
            scores = groups.get((method, category))
            if not scores:
                continue
            row: dict[str, Any] = {"method": method, "category": category, "n": len(scores)}
            for m in metrics:
                values = [s[m] for s in scores if m in s]
                row[m] = round(sum(values) / len(values), 4) if values else ""
            rows.append(row)
    return rows


def _bar_chart(rows: Sequence[dict[str, Any]], metric: str) -> str:
    categories = _order([r["category"] for r in rows])
    methods = _order([r["method"] for r in rows])
    values = {(r["method"], r["category"]): r.get(metric) for r in rows}
    numbers = [v for v in values.values() if isinstance(v, int | float)]
    top = max([1.0, *numbers]) if numbers else 1.0
    bar_w, gap, chart_h = 18, 14, 140
    group_w = bar_w * len(methods) + gap
    width = 40 + group_w * len(categories) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{chart_h + 60}" '
        f'role="img" aria-label="{html.escape(metric)} by category">',
        f'<text x="4" y="14" font-size="12" font-weight="bold">{html.escape(metric)}</text>',
        f'<line x1="36" y1="{chart_h + 20}" x2="{width}" y2="{chart_h + 20}" stroke="#333"/>',
        f'<text x="4" y="28" font-size="10">{top:g}</text>',
        f'<text x="4" y="{chart_h + 20}" font-size="10">0</text>',
    ]
    for ci, category in enumerate(categories):
        x0 = 40 + ci * group_w
        for mi, method in enumerate(methods):
            value = values.get((method, category))
            if not isinstance(value, int | float):
                continue
            h = chart_h * value / top
            parts.append(
                f'<rect x="{x0 + mi * bar_w}" y="{chart_h + 20 - h:.1f}" width="{bar_w - 2}" '
                f'height="{h:.1f}" fill="{_COLOURS[mi % len(_COLOURS)]}">'
                f"<title>{html.escape(method)} · {html.escape(category)}: {value:g}</title></rect>"
            )
        parts.append(
            f'<text x="{x0}" y="{chart_h + 34}" font-size="10">{html.escape(category)}</text>'
        )
    for mi, method in enumerate(methods):
        parts.append(
            f'<rect x="{40 + mi * 110}" y="{chart_h + 44}" width="10" height="10" '
            f'fill="{_COLOURS[mi % len(_COLOURS)]}"/><text x="{54 + mi * 110}" '
            f'y="{chart_h + 53}" font-size="10">{html.escape(method)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _figure(record: dict[str, Any], size: int = 160) -> str:
    """An image with the plan's regions drawn over it (SVG over the PNG), and its scores.

    The longer side is ``size`` pixels and the image keeps the aspect it was rendered at.
    """
    settings = record.get("settings") or {}
    w, h = settings.get("width") or 1, settings.get("height") or 1
    width, height = size * w / max(w, h), size * h / max(w, h)
    boxes = ""
    plan = record.get("plan")
    if plan:
        from rpg.models import RegionPlan

        parsed = RegionPlan.model_validate(plan)
        for i, ((x0, y0, x1, y1), prompt) in enumerate(
            zip(parsed.boxes(), parsed.prompts, strict=True)
        ):
            colour = _COLOURS[i % len(_COLOURS)]
            boxes += (
                f'<rect x="{x0 * width:.1f}" y="{y0 * height:.1f}" '
                f'width="{(x1 - x0) * width:.1f}" height="{(y1 - y0) * height:.1f}" fill="none" '
                f'stroke="{colour}" stroke-width="2" stroke-dasharray="4 3">'
                f"<title>{html.escape(prompt)}</title>"
                f'</rect><text x="{x0 * width + 3:.1f}" y="{y0 * height + 12:.1f}" '
                f'font-size="11" fill="{colour}">{i + 1}</text>'
            )
    scores = " · ".join(f"{k} {v:.2f}" for k, v in record["scores"].items())
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{height:.0f}"><image href="{html.escape(record["image"])}" '
        f'width="{width:.0f}" height="{height:.0f}" '
        f'style="image-rendering:pixelated"/>{boxes}</svg>'
        f"<figcaption><b>{html.escape(record['method'])}</b><br>{html.escape(scores)}"
        "</figcaption></figure>"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    records: Sequence[dict[str, Any]],
    *,
    title: str = "rpg eval",
    command: str | None = None,
) -> Path:
    """Write ``summary.csv`` and ``index.html`` into ``out_dir``; the path of ``index.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    metrics = [k for k in (rows[0] if rows else {}) if k not in ("method", "category", "n")]
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "category", "n", *metrics])
        writer.writeheader()
        writer.writerows(rows)

    table = ["<table><tr><th>method</th><th>category</th><th>n</th>"]
    table += [f"<th>{html.escape(m)}</th>" for m in metrics]
    table.append("</tr>")
    for row in rows:
        cells = "".join(
            f"<td>{row[m]:.3f}</td>" if isinstance(row[m], float) else f"<td>{row[m]}</td>"
            for m in metrics
        )
        table.append(
            f"<tr><td>{html.escape(row['method'])}</td><td>{html.escape(row['category'])}</td>"
            f"<td>{row['n']}</td>{cells}</tr>"
        )
    table.append("</table>")
    charts = "".join(_bar_chart([r for r in rows if r["category"] != ALL], m) for m in metrics)

    by_prompt: dict[tuple[int, str], dict[int, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        by_prompt[(r.get("index", 0), r["prompt"])][r["seed"]].append(r)
    sections = []
    for (_, prompt), seeds in sorted(by_prompt.items(), key=lambda kv: kv[0][0]):
        first = next(iter(seeds.values()))[0]
        rows_html = "".join(
            f'<div class="row"><span class="seed">seed {seed}</span>'
            + "".join(_figure(r) for r in recs)
            + "</div>"
            for seed, recs in sorted(seeds.items())
        )
        sections.append(
            f"<section><h3>{html.escape(prompt)}</h3><p class='cat'>"
            f"{html.escape(first['category'])}</p>{rows_html}</section>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, td:nth-child(2), th {{ text-align: left; }}
.charts svg {{ margin: 0 1.5em 1em 0; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; margin-bottom: 6px; }}
.seed {{ width: 4em; font-size: 12px; color: #666; }}
figure {{ margin: 0; font-size: 11px; max-width: 160px; }}
.cat {{ color: #666; margin: 0; }}
code {{ background: #f4f4f4; padding: 2px 4px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{f"<p>Made by <code>{html.escape(command)}</code></p>" if command else ""}
<h2>Summary</h2>{"".join(table)}
<h2>By category</h2><div class="charts">{charts}</div>
<h2>Images</h2><p>Dashed boxes: the regions of the plan the image was rendered with (none for
the stock pipeline).</p>
{"".join(sections)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
