"""The RPG split-ratio grammar and the geometry of region cells.

Pure functions with no torch dependency: they turn ``"1,1;2,1,3"`` into rows of relative weights
and back, and turn relative weights into integer cell boundaries on a latent grid of any size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from rpg.errors import SplitRatioError

__all__ = [
    "Rows",
    "cell_edges",
    "check_cell_sizes",
    "format_split_ratio",
    "grid_cells",
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
    k = len(weights)
    if k == 0:
        raise ValueError("cell_edges needs at least one weight")
    if n < 0:
        raise ValueError(f"cell_edges needs a non-negative size, got {n}")
    total = float(sum(weights))
    edges = [0]
    acc = 0.0
    for w in weights[:-1]:
        acc += w
        edges.append(min(n, math.floor(acc / total * n + 0.5)))
    edges.append(n)
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
