"""Where every region's query tokens sit at one latent resolution.

The processor sees a layer's queries as a flat ``h·w`` sequence in row-major order. Gathering each
region's rows separately would cost one gather and one scatter per region and layer, so instead
:func:`region_index` builds one permutation that makes every region's rows contiguous. The
processor permutes the hidden states once, slices each region as a view, and undoes the
permutation once after ``to_out``. For layouts whose regions are already contiguous (one region,
or one region per row) the permutation is the identity and is skipped.

A joint sequence may hold the patch grid more than once: FLUX.2 [klein] inpainting appends the
image to repaint as *condition* tokens on the same grid, after the noisy image tokens. With
``copies=k`` the index covers ``k·h·w`` image tokens, copy ``c`` at flat positions
``c·h·w + y·w + x``, and every copy of a cell belongs to that cell's region (or canvas layer,
or background) with the same weight: the condition tokens are a second copy of the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rpg.attention.spec import RegionalLayout
from rpg.layout import grid_cells

__all__ = ["Painter", "RegionIndex", "region_index", "region_labels"]


@dataclass(frozen=True)
class Painter:
    """One canvas layer (or the background) at the positions it paints on a soft grid.

    ``region`` is the layer's number (the number of layers for the background); ``index``
    holds the flat positions where it paints (``[n]``, long) and ``weight`` what it paints
    there (``[n, 1, 1]``, float32, its composited weight ``w_r(p)`` in ``(0, 1]``);
    ``base_weight`` is the layer's ``β_r`` (0 for the background).
    """

    region: int
    index: torch.Tensor
    weight: torch.Tensor
    base_weight: float


@dataclass(frozen=True)
class RegionIndex:
    """Region geometry on one ``height × width`` latent grid, as index tensors on one device.

    ``bounds[r]`` is region ``r``'s ``[start, end)`` range in the permuted sequence (empty when a
    narrow region has no cell at a coarse resolution). ``perm[i]`` is the original flat position
    of permuted row ``i`` and ``inverse`` undoes it; both are ``None`` when no reordering is
    needed. ``base_weights`` is ``[N, 1]`` (permuted order) or ``None`` when all weights are 0;
    ``uniform_base_weight`` is set when every region has the same weight, so one scalar blend
    suffices.
    """

    height: int
    width: int
    bounds: tuple[tuple[int, int], ...]
    perm: torch.Tensor | None
    inverse: torch.Tensor | None
    base_weights: torch.Tensor | None
    uniform_base_weight: float | None
    #: Soft canvas grids only (some position shared by several painters): every layer and the
    #: background with the positions it paints. Empty for grids where each position has one
    #: painter, which use ``bounds`` and ``perm`` like a grid plan.
    painters: tuple[Painter, ...] = ()
    #: Soft grids with a base prompt: ``Σ_r w_r(p)·β_r`` per position (``[h·w, 1, 1]``,
    #: float32), the weight of the base prompt's attention.
    base_coef: torch.Tensor | None = None
    #: How many copies of the ``height × width`` grid the image tokens hold (see the module).
    copies: int = 1

    @property
    def uses_base(self) -> bool:
        return self.base_weights is not None or self.base_coef is not None

    @property
    def soft(self) -> bool:
        """Whether positions are shared (weighted sums) rather than owned by one painter."""
        return bool(self.painters)


def region_labels(layout: RegionalLayout, h: int, w: int) -> torch.Tensor:
    """An ``[h, w]`` long tensor holding the region number of every latent cell.

    For a canvas on a grid where every position has one painter, that painter's number (the
    number of layers for the background).
    """
    if layout.canvas is not None:
        weights = _canvas_weights(layout, h, w)
        if not bool(((weights == 0) | (weights == 1)).all()):
            raise ValueError(f"the canvas has shared (soft) positions on a {h}x{w} grid")
        return weights.argmax(dim=0)
    labels = torch.full((h, w), -1, dtype=torch.long)
    for r, (y0, y1, x0, x1) in enumerate(grid_cells(layout.rows, h, w)):
        labels[y0:y1, x0:x1] = r
    if bool((labels < 0).any()):  # grid_cells tiles the canvas; guard against a future change
        raise AssertionError(f"region cells leave gaps on a {h}x{w} grid")
    return labels


def _canvas_weights(layout: RegionalLayout, h: int, w: int) -> torch.Tensor:
    """``[N + 1, h, w]`` float64: what every layer, then the background, paints."""
    assert layout.canvas is not None
    weights, background = layout.canvas.layer_weights(h, w)
    return torch.cat([torch.from_numpy(weights), torch.from_numpy(background)[None]])


def _betas(layout: RegionalLayout) -> tuple[float, ...]:
    """Base weight per painter: the regions', then 0 for a canvas's background."""
    return (*layout.base_weights, 0.0) if layout.canvas is not None else layout.base_weights


def _soft_index(
    layout: RegionalLayout,
    weights: torch.Tensor,
    h: int,
    w: int,
    device: torch.device | str | None,
    copies: int,
) -> RegionIndex:
    betas = _betas(layout)
    flat = weights.reshape(weights.shape[0], -1).repeat(1, copies)
    painters = []
    for r in range(flat.shape[0]):
        where = torch.nonzero(flat[r] > 0).reshape(-1)
        if where.numel():
            weight = flat[r, where].to(torch.float32).reshape(-1, 1, 1)
            painters.append(Painter(r, where.to(device), weight.to(device), float(betas[r])))
    base_coef = None
    if any(b > 0 for b in betas):
        coef = (flat * torch.tensor(betas, dtype=torch.float64)[:, None]).sum(dim=0)
        base_coef = coef.to(torch.float32).reshape(-1, 1, 1).to(device)
    return RegionIndex(
        height=h,
        width=w,
        bounds=(),
        perm=None,
        inverse=None,
        base_weights=None,
        uniform_base_weight=None,
        painters=tuple(painters),
        base_coef=base_coef,
        copies=copies,
    )


def region_index(
    layout: RegionalLayout,
    h: int,
    w: int,
    device: torch.device | str | None = None,
    *,
    copies: int = 1,
) -> RegionIndex:
    """Build the permutation, region bounds and per-row base weights for an ``h × w`` grid.

    A canvas whose every position has one painter at this size (hard boxes and masks) is
    indexed like a grid with one more region, the background, last; one with shared positions
    gets its :class:`Painter` lists instead. ``copies`` is how many times the grid sits in the
    image tokens (2 for klein inpainting's condition tokens, see the module): each region's
    rows are then its cells in the first copy, then in the second, and so on.
    """
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    n_painters = layout.num_regions
    if layout.canvas is not None:
        weights = _canvas_weights(layout, h, w)
        if not bool(((weights == 0) | (weights == 1)).all()):
            return _soft_index(layout, weights, h, w, device, copies)
        n_painters += 1
    flat = region_labels(layout, h, w).reshape(-1).repeat(copies)
    # A stable sort keeps row-major order inside each region, so the identity is detected exactly.
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=n_painters).tolist()
    bounds: list[tuple[int, int]] = []
    start = 0
    for count in counts:
        bounds.append((start, start + int(count)))
        start += int(count)

    identity = bool(torch.equal(order, torch.arange(flat.numel())))
    perm = inverse = None
    if not identity:
        perm = order.to(device)
        inverse = torch.argsort(order).to(device)

    betas = _betas(layout)
    base_weights: torch.Tensor | None = None
    uniform: float | None = None
    if any(b > 0 for b in betas):
        per_row = torch.tensor(betas, dtype=torch.float32)[flat[order]]
        base_weights = per_row.reshape(-1, 1).to(device)
        present = {betas[r] for r, c in enumerate(counts) if c}
        if len(present) == 1:
            uniform = float(next(iter(present)))
    return RegionIndex(
        height=h,
        width=w,
        bounds=tuple(bounds),
        perm=perm,
        inverse=inverse,
        base_weights=base_weights,
        uniform_base_weight=uniform,
        copies=copies,
    )
