"""Soft canvas grids on MM-DiT with the image keys attended once.

With global image attention every painter of a soft grid, and the base prompt, reads the same
image keys next to its own text: painter ``r`` at position ``p`` reads ``text(r) ∪ I``. Paid
naively, a position painted by two layers attends the whole image twice, and a base prompt adds
a third full pass — on FLUX at 512², where the image is most of the sequence, that put soft masks
with a base at 1.16× the stock block's work. Here ``I`` is attended once by every query, each
painter attends only its own short text, and the partial results are merged exactly by their
log-sum-exps (as :meth:`~rpg.attention.joint_core._JointAttention._regional_image_merged` does
for hard regions):

``term_r(p) = a_r(p)·attn_I(p) + (1 − a_r(p))·attn_r(p)``, ``a_r = σ(lse_I − lse_r)``

``out(p) = Σ_r w_r(p)·(1 − β_r)·term_r(p) + (Σ_r w_r(p)·β_r)·term_base(p)``.
"""

from __future__ import annotations

import torch

from rpg.attention.lse import attention_with_lse, merge_weight
from rpg.attention.regions import RegionIndex
from rpg.attention.spec import Span

__all__ = ["painted_image_merged"]


def painted_image_merged(
    q_i: torch.Tensor,
    k_i: torch.Tensor,
    v_i: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    index: RegionIndex,
    spans: tuple[Span, ...],
    base_span: Span | None,
) -> torch.Tensor:
    """Image outputs ``[B, L, H, D]`` of a soft grid with global image attention (see module).

    Inputs are ``[B, S, H, D]`` after the stock projections; no gradient flows (the log-sum-exp
    kernels give none), so callers use it only where autograd is off.
    """
    qi, ki, vi = (x.transpose(1, 2) for x in (q_i, k_i, v_i))  # [B, H, L, D]
    kt, vt = k_t.transpose(1, 2), v_t.transpose(1, 2)
    o_img, l_img = attention_with_lse(qi, ki, vi)
    out = torch.zeros(qi.shape, dtype=torch.float32, device=qi.device)
    coef_img = torch.zeros(qi.shape[:-1], dtype=torch.float32, device=qi.device)
    for painter in index.painters:
        beta = painter.base_weight
        if beta >= 1:
            continue  # all of its share goes through the base term
        s0, s1 = spans[painter.region]
        where = painter.index
        o_reg, l_reg = attention_with_lse(
            qi.index_select(2, where), kt[:, :, s0:s1], vt[:, :, s0:s1]
        )
        share = merge_weight(l_img.index_select(2, where), l_reg)
        weight = painter.weight.to(torch.float32).view(1, 1, -1) * (1 - beta)
        coef_img.index_add_(2, where, weight * share)
        out.index_add_(2, where, o_reg.float() * (weight * (1 - share)).unsqueeze(-1))
    if index.base_coef is not None and base_span is not None:
        b0, b1 = base_span
        o_base, l_base = attention_with_lse(qi, kt[:, :, b0:b1], vt[:, :, b0:b1])
        share = merge_weight(l_img, l_base)
        weight = index.base_coef.to(device=qi.device, dtype=torch.float32).view(1, 1, -1)
        coef_img.add_(weight * share)
        out.addcmul_(o_base.float(), (weight * (1 - share)).unsqueeze(-1))
    out.addcmul_(o_img.float(), coef_img.unsqueeze(-1))
    return out.to(q_i.dtype).transpose(1, 2)
