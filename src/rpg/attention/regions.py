"""Where every region's query tokens sit at one latent resolution.

The processor sees a layer's queries as a flat ``h·w`` sequence in row-major order. Gathering each
region's rows separately would cost one gather and one scatter per region and layer, so instead
:func:`region_index` builds one permutation that makes every region's rows contiguous. The
processor permutes the hidden states once, slices each region as a view, and undoes the
permutation once after ``to_out``. For layouts whose regions are already contiguous (one region,
or one region per row) the permutation is the identity and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rpg.attention.spec import RegionalLayout
from rpg.layout import grid_cells

__all__ = ["RegionIndex", "region_index", "region_labels"]


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

    @property
    def uses_base(self) -> bool:
        return self.base_weights is not None


def region_labels(layout: RegionalLayout, h: int, w: int) -> torch.Tensor:
    """An ``[h, w]`` long tensor holding the region number of every latent cell."""
    labels = torch.full((h, w), -1, dtype=torch.long)
    for r, (y0, y1, x0, x1) in enumerate(grid_cells(layout.rows, h, w)):
        labels[y0:y1, x0:x1] = r
    if bool((labels < 0).any()):  # grid_cells tiles the canvas; guard against a future change
        raise AssertionError(f"region cells leave gaps on a {h}x{w} grid")
    return labels


def region_index(
    layout: RegionalLayout, h: int, w: int, device: torch.device | str | None = None
) -> RegionIndex:
    """Build the permutation, region bounds and per-row base weights for an ``h × w`` grid."""
    flat = region_labels(layout, h, w).reshape(-1)
    # A stable sort keeps row-major order inside each region, so the identity is detected exactly.
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=layout.num_regions).tolist()
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

    betas = layout.base_weights
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
    )
