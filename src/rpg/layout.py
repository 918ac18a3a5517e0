"""The RPG split-ratio grammar and the geometry of region cells.

Pure functions with no torch dependency: they turn ``"1,1;2,1,3"`` into rows of relative weights
and back, and turn relative weights into integer cell boundaries on a latent grid of any size.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from rpg.errors import SplitRatioError

__all__ = [
    "Box",
    "Rows",
    "box_cells",
    "cell_edges",
    "check_cell_sizes",
    "composite_layers",
    "cumulative_bounds",
    "edge_index",
    "edges_from_bounds",
    "format_split_ratio",
    "grid_cells",
    "grid_of_boxes",
    "latent_grid_for_tokens",
    "latent_grids",
    "parse_split_ratio",
    "split_prompts",
]

#: Rows as ``[(height, [width, ...]), ...]`` in relative units, top to bottom, left to right.
Rows = list[tuple[float, list[float]]]

#: The largest image side a request accepts (see ``GenerationRequest.width``).
MAX_SIDE = 8192

_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def _number(token: str, text: str) -> float:
    token = token.strip()
    if not token:
        raise SplitRatioError(f"split ratio {text!r} has an empty value")
    try:
        value = float(token)
    except ValueError:
        raise SplitRatioError(f"split ratio {text!r}: {token!r} is not a number") from None
    if not math.isfinite(value):
        raise SplitRatioError(f"split ratio {text!r}: {token!r} is not a finite number")
    if value <= 0:
        raise SplitRatioError(f"split ratio {text!r}: every value must be positive, got {token}")
    return value


def check_finite_total(weights: Sequence[float], what: str) -> None:
    """Refuse weights whose sum overflows: ``1e308,1e308`` would give every region zero width."""
    if not math.isfinite(sum(weights)):
        raise SplitRatioError(
            f"the {what} add up to more than a float can hold ({', '.join(map(str, weights))}); "
            "use small relative values such as 1,2,1"
        )


def parse_split_ratio(text: str) -> Rows:
    """Parse the paper's split-ratio string into rows of relative weights.

    ``;`` separates rows. Without ``;`` the string is one row whose values are region widths.
    With ``;`` each row is ``height[,w0,w1,...]``; a row with a single value is one region.
    """
    if not isinstance(text, str) or not text.strip():
        raise SplitRatioError("split ratio is empty; expected something like '1,1' or '1,1;1,2'")
    cleaned = text.strip()
    if ";" not in cleaned:
        widths = [_number(tok, text) for tok in cleaned.split(",")]
        check_finite_total(widths, f"widths of split ratio {text!r}")
        return [(1.0, widths)]
    rows: Rows = []
    for part in cleaned.split(";"):
        values = [_number(tok, text) for tok in part.split(",")]
        height, widths = values[0], values[1:] or [1.0]
        check_finite_total(widths, f"widths of split ratio {text!r}")
        rows.append((height, widths))
    check_finite_total([h for h, _ in rows], f"row heights of split ratio {text!r}")
    return rows


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_split_ratio(rows: Sequence[tuple[float, Sequence[float]]]) -> str:
    """Write rows back in the split-ratio grammar (the inverse of :func:`parse_split_ratio`)."""
    if not rows:
        raise SplitRatioError("cannot format a split ratio with no rows")
    if len(rows) == 1:
        return ",".join(_fmt(w) for w in rows[0][1])
    parts = []
    for height, widths in rows:
        values = [height] if len(widths) == 1 else [height, *widths]
        parts.append(",".join(_fmt(v) for v in values))
    return ";".join(parts)


def split_prompts(text: str) -> list[str]:
    """Split a ``BREAK``-separated prompt string into stripped prompts (empty pieces kept)."""
    return [piece.strip() for piece in _BREAK.split(text.strip())]


def cell_edges(weights: Sequence[float], n: int) -> list[int]:
    """Integer boundaries ``[0, e1, ..., n]`` splitting ``n`` cells in proportion to ``weights``.

    One rule for every resolution: cumulative fractions times ``n``, rounded half up. The edges
    are monotone and tile ``range(n)`` exactly. When ``n`` is at least the number of parts, every
    part keeps at least one cell (a narrow region is widened at coarse layers rather than dropped);
    when ``n`` is smaller, some parts are empty at that resolution and their prompts do not act
    there.
    """
    if len(weights) == 0:
        raise ValueError("cell_edges needs at least one weight")
    return edges_from_bounds(cumulative_bounds(weights), n)


def cumulative_bounds(weights: Sequence[float]) -> list[float]:
    """The inner boundaries of parts in proportion to ``weights``, as fractions in ``(0, 1)``.

    Cumulative sums divided by the total: the one arithmetic both :func:`cell_edges` and a
    grid plan's boxes use, so a grid given as boxes lands on the very same cells.
    """
    total = float(sum(weights))
    bounds = []
    acc = 0.0
    for w in weights[:-1]:
        acc += w
        bounds.append(acc / total)
    return bounds


def edge_index(fraction: float, n: int) -> int:
    """The integer grid line nearest ``fraction`` of ``n`` cells, rounding half up (0 to n)."""
    return max(0, min(n, math.floor(fraction * n + 0.5)))


def edges_from_bounds(bounds: Sequence[float], n: int) -> list[int]:
    """Integer edges ``[0, e1, ..., n]`` for parts whose inner boundaries are ``bounds``.

    The rule of :func:`cell_edges` (round half up, then widen parts that got no cell when
    there is room), for boundaries given as fractions.
    """
    k = len(bounds) + 1
    if n < 0:
        raise ValueError(f"cell_edges needs a non-negative size, got {n}")
    edges = [0, *(min(n, math.floor(b * n + 0.5)) for b in bounds), n]
    if n >= k:
        for i in range(1, k):
            edges[i] = max(edges[i], edges[i - 1] + 1)
        for i in range(k - 1, 0, -1):
            edges[i] = min(edges[i], edges[i + 1] - 1)
    else:
        for i in range(1, k + 1):
            edges[i] = max(edges[i], edges[i - 1])
    return edges


def check_cell_sizes(
    rows: Sequence[tuple[float, Sequence[float]]], height: int, width: int, *, factor: int = 8
) -> None:
    """Refuse a plan with a region smaller than one latent cell at the finest grid.

    Such a region has no latent position of its own at full resolution (at 64×64 a 1000-region
    row gives most regions none at all), so its prompt would silently act nowhere. The error
    names the region and the smallest image size at which every region gets a cell.
    """
    h, w = height // factor, width // factor
    total_h = math.fsum(r[0] for r in rows)
    tol = 1e-9
    smallest_h = min(r[0] for r in rows) / total_h
    smallest_w = min(v / math.fsum(ws) for _, ws in rows for v in ws)
    if smallest_h * h >= 1 - tol and smallest_w * w >= 1 - tol:
        return
    # (cells tall, cells wide, row, position in row) of every region, in reading order.
    sizes = [
        (row_h / total_h * h, v / math.fsum(widths) * w, r, c)
        for r, (row_h, widths) in enumerate(rows)
        for c, v in enumerate(widths)
    ]
    index = next(i for i, (tall, wide, _, _) in enumerate(sizes) if min(tall, wide) < 1 - tol)
    tall, wide, row, col = sizes[index]
    what = f"{wide:.2g} latent cells wide" if wide < 1 - tol else f"{tall:.2g} latent cells tall"
    need_w = max(width, math.ceil(1 / smallest_w - tol) * factor)
    need_h = max(height, math.ceil(1 / smallest_h - tol) * factor)
    fix = "merge the smallest regions into fewer, larger ones"
    if max(need_w, need_h) <= MAX_SIDE:
        fix = f"render at {need_w}x{need_h} or larger, or {fix}"
    raise SplitRatioError(
        f"region {index + 1} of {len(sizes)} (row {row + 1}, region {col + 1}) is {what} on a "
        f"{width}x{height} image (a latent cell is {factor}x{factor} pixels), so its prompt "
        f"would act nowhere; {fix}"
    )


def grid_cells(
    rows: Sequence[tuple[float, Sequence[float]]], h: int, w: int
) -> list[tuple[int, int, int, int]]:
    """Cells ``(y0, y1, x0, x1)`` of every region, in reading order, on an ``h × w`` grid."""
    row_edges = cell_edges([r[0] for r in rows], h)
    cells = []
    for i, (_, widths) in enumerate(rows):
        col_edges = cell_edges(list(widths), w)
        for j in range(len(widths)):
            cells.append((row_edges[i], row_edges[i + 1], col_edges[j], col_edges[j + 1]))
    return cells


def latent_grids(
    height: int, width: int, *, factor: int = 8, levels: int = 6
) -> list[tuple[int, int]]:
    """The latent grids a UNet sees for an image: ``H/8 × W/8`` then halved, rounding up."""
    h, w = height // factor, width // factor
    grids = [(h, w)]
    for _ in range(levels - 1):
        h, w = -(-h // 2), -(-w // 2)
        grids.append((h, w))
    return grids


def latent_grid_for_tokens(
    tokens: int, height: int, width: int, *, factor: int = 8
) -> tuple[int, int]:
    """Recover the ``h × w`` grid of an attention layer from its query count and the image size."""
    for h, w in latent_grids(height, width, factor=factor, levels=12):
        if h * w == tokens:
            return h, w
        if h * w < tokens:
            break
    raise ValueError(
        f"an attention layer has {tokens} query tokens, which matches no latent grid of a "
        f"{width}x{height} image; is the processor configured with the image size being generated?"
    )


#: A box ``(x0, y0, x1, y1)`` in fractions of the canvas.
Box = tuple[float, float, float, float]


def grid_of_boxes(
    boxes: Sequence[Box],
) -> tuple[list[float], list[list[float]]] | None:
    """The rows and columns that ``boxes`` tile exactly, in reading order, else ``None``.

    Returns the inner row boundaries and, per row, the inner column boundaries (fractions).
    Boxes tile as a grid when consecutive boxes share their top and bottom, each row runs from
    0 to 1 left to right without gap, and the rows run from 0 to 1 top to bottom: what
    :meth:`rpg.models.RegionPlan.to_canvas` makes of a grid. Such boxes are rasterised with the
    grid's own rule (:func:`edges_from_bounds`, narrow parts widened), so they land on the same
    cells as the grid at every size.
    """
    rows: list[list[Box]] = []
    for box in boxes:
        if rows and (rows[-1][0][1], rows[-1][0][3]) == (box[1], box[3]):
            rows[-1].append(box)
        else:
            rows.append([box])
    if not rows or rows[0][0][1] != 0.0 or rows[-1][0][3] != 1.0:
        return None
    row_bounds: list[float] = []
    col_bounds: list[list[float]] = []
    for i, row in enumerate(rows):
        if i and rows[i - 1][0][3] != row[0][1]:
            return None
        if row[0][0] != 0.0 or row[-1][2] != 1.0:
            return None
        if any(a[2] != b[0] for a, b in itertools.pairwise(row)):
            return None
        col_bounds.append([b[2] for b in row[:-1]])
        if i:
            row_bounds.append(row[0][1])
    return row_bounds, col_bounds


def box_cells(box: Box, h: int, w: int) -> tuple[int, int, int, int]:
    """The cells ``(y0, y1, x0, x1)`` a free box covers on an ``h × w`` grid (may be empty).

    Each side goes to its nearest grid line, rounding half up: the rule of :func:`cell_edges`
    without its widening, which only makes sense for parts that tile the canvas.
    """
    x0, y0, x1, y1 = box
    return edge_index(y0, h), edge_index(y1, h), edge_index(x0, w), edge_index(x1, w)


def composite_layers(coverages: Sequence[Any]) -> tuple[Any, Any]:
    """Per-layer paint weights and the background's, from coverages listed bottom to top.

    With coverage ``m_r`` (numpy arrays of one shape, values 0 to 1), later layers cover
    earlier ones as in an image editor::

        w_r  = m_r · Π_{s above r} (1 − m_s)
        w_bg = Π_r (1 − m_r)

    Returns ``(weights [N, h, w], background [h, w])`` as float64 arrays; for hard coverages
    (only 0 and 1) every weight is exactly 0 or 1 and each position has exactly one painter.
    """
    import numpy as np

    stack = np.stack([np.asarray(m, dtype=np.float64) for m in coverages])
    weights = np.empty_like(stack)
    remaining = np.ones_like(stack[0])
    for r in range(len(stack) - 1, -1, -1):
        weights[r] = stack[r] * remaining
        remaining = remaining * (1.0 - stack[r])
    return weights, remaining
