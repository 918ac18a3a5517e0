"""Regional attention on a soft canvas grid, where positions are shared between painters.

On a grid with shared positions (soft edges, translucent masks) every layer attends with the
queries it paints, gathered, and adds its weighted result (``index_add``); the base prompt is
attended once by every query, weighted by ``Σ_r w_r(p)·β_r``. A hard grid, where every position
has one painter, takes the cheaper path of :class:`~rpg.attention.processor.RegionalAttnProcessor`
(one slice of queries per painter).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rpg.attention.regions import RegionIndex
from rpg.attention.spec import Span

__all__ = ["paint_soft"]


def paint_soft(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    keys_values: Callable[[int, Span], tuple[torch.Tensor, torch.Tensor]],
    mask: torch.Tensor | None,
    base_mask: torch.Tensor | None,
    index: RegionIndex,
    target: torch.Tensor,
    rows: slice,
    spans: tuple[Span, ...],
    base_span: Span | None,
) -> None:
    """A soft canvas grid: every painter's weighted term, added where it paints.

    ``out(p) = Σ_r w_r(p)·(1 − β_r)·Attn(q_p, S_r) + (Σ_r w_r(p)·β_r)·Attn(q_p, S_base)``:
    each painter attends with the queries it paints only (gathered) and its result is
    scatter-added; the base prompt is attended once by every query. ``mask`` is the layer's
    ``[B, H, N or 1, T]`` attention mask (``None``: none), ``base_mask`` its part for the batch
    ``rows`` and the base span.
    """
    target.zero_()
    for painter in index.painters:
        if painter.base_weight >= 1:
            continue  # all of its share goes through the base term
        k0, k1 = spans[painter.region]
        queries = q.index_select(2, painter.index)
        k, v = keys_values(painter.region, (k0, k1))
        part = F.scaled_dot_product_attention(
            queries,
            k,
            v,
            attn_mask=_cut_index(mask, rows, painter.index, (k0, k1)),
        ).transpose(1, 2)
        weight = painter.weight.to(part.dtype)
        if painter.base_weight > 0:
            weight = weight * (1 - painter.base_weight)
        target.index_add_(1, painter.index, part * weight)
    if index.base_coef is None or base_span is None:
        return
    k0, k1 = base_span
    base = F.scaled_dot_product_attention(
        q, key[:, :, k0:k1], value[:, :, k0:k1], attn_mask=base_mask
    ).transpose(1, 2)
    target.addcmul_(base, index.base_coef.to(target.dtype))


def _cut_index(
    mask: torch.Tensor | None, rows: slice, queries: torch.Tensor, keys: Span
) -> torch.Tensor | None:
    """The part of a ``[B, H, N or 1, T]`` mask for some batch rows, the query rows ``queries``
    (an index) and the keys ``keys``."""
    if mask is None:
        return None
    mask = mask[rows, :, :, keys[0] : keys[1]]
    if mask.shape[2] != 1:
        mask = mask.index_select(2, queries)
    return mask
