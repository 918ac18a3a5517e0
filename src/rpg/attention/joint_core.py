"""The regional joint-attention arithmetic shared by every MM-DiT processor.

:class:`_JointAttention` takes one call's text and image queries, keys and values (``[B, S, H,
D]``, after the stock projections, norms and RoPE) and returns the text and image attention
outputs by the rules of :mod:`rpg.attention.joint`: each region's queries gathered and attended
to their own key set with one unmasked attention call each, the base term merged by log-sum-exp
where the kernel allows, soft canvas grids by weighted scatter-adds. The family processors
(:mod:`rpg.attention.joint_processors`, :mod:`rpg.attention.joint_flux2`) only do the
projections around it.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    dispatch_attention_fn,
)

from rpg.attention.joint_regions import JointRegions
from rpg.attention.joint_soft import painted_image_merged
from rpg.attention.lse import attention_with_lse, merge_weight
from rpg.attention.regions import RegionIndex
from rpg.attention.spec import Span

_LSE_DEVICES = ("cpu", "cuda", "meta")


def _cat(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return torch.cat([first, second], dim=1)


class _JointAttention:
    """The regional joint-attention arithmetic on ``[B, S, H, D]`` queries, keys and values."""

    _attention_backend: Any = None
    _parallel_config: Any = None

    def __init__(self, regions: JointRegions, *, regional_block: bool, image_first: bool) -> None:
        self.regions = regions
        self.regional_block = regional_block
        self.image_first = image_first

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = dispatch_attention_fn(
            q, k, v, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        return out

    def _keys(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Text and image keys (or values) joined in the model's own sequence order."""
        return _cat(image, text) if self.image_first else _cat(text, image)

    def attend(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        q_i: torch.Tensor,
        k_i: torch.Tensor,
        v_i: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention outputs ``(text, image)`` for one call, split by the run state's rows."""
        rows = self.regions.state.rows
        batch = q_t.shape[0]
        if rows == "negative":
            return self._negative(q_t, k_t, v_t, q_i, k_i, v_i)
        if rows == "positive":
            return self._positive(q_t, k_t, v_t, q_i, k_i, v_i)
        if batch % 2:
            raise ValueError(f"a [negative, positive] batch must have even size, got {batch}")
        half = batch // 2
        neg = self._negative(*(x[:half] for x in (q_t, k_t, v_t, q_i, k_i, v_i)))
        pos = self._positive(*(x[half:] for x in (q_t, k_t, v_t, q_i, k_i, v_i)))
        return torch.cat([neg[0], pos[0]]), torch.cat([neg[1], pos[1]])

    def _negative(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        q_i: torch.Tensor,
        k_i: torch.Tensor,
        v_i: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stock attention over the negative prompt's tokens (padding is never a key)."""
        s0, s1 = self.regions.negative_span or (0, k_t.shape[1])
        out = self._attend(
            self._keys(q_t, q_i), self._keys(k_t[:, s0:s1], k_i), self._keys(v_t[:, s0:s1], v_i)
        )
        n_text = q_t.shape[1]
        if self.image_first:
            return out[:, -n_text:], out[:, :-n_text]
        return out[:, :n_text], out[:, n_text:]

    def _positive(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        q_i: torch.Tensor,
        k_i: torch.Tensor,
        v_i: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        regions = self.regions
        index = regions.index_for(q_i.shape[1], q_i.device)
        regional = self.regional_block and regions.step_is_regional()
        if index.soft:
            return self._painted(q_t, k_t, v_t, q_i, k_i, v_i, index, regional)
        if index.perm is not None:
            q_i, k_i, v_i = (x.index_select(1, index.perm) for x in (q_i, k_i, v_i))
        out_t = torch.zeros_like(q_t)  # rows outside every span (padding) are read by no one
        global_image = regions.options.image_attention == "global"

        if regional:
            out_i = self._regional_image(q_t, k_t, v_t, q_i, k_i, v_i, index, global_image)
        else:
            assert regions.global_span is not None  # checked by JointRegions
            g0, g1 = regions.global_span
            out_i = self._attend(
                q_i, self._keys(k_t[:, g0:g1], k_i), self._keys(v_t[:, g0:g1], v_i)
            )

        # Text of each region prompt sees its own tokens and its region's image tokens; text of
        # the base (and of the whole prompt packed for non-regional calls) sees every image token.
        wide = {s for s in (regions.base_span, regions.global_span) if s is not None}
        cells: dict[Span, list[tuple[int, int]]] = {}
        for span, bounds in zip(regions.painter_spans, index.bounds, strict=True):
            if span not in wide and span[1] > span[0]:
                cells.setdefault(span, []).append(bounds)
        for (s0, s1), cell_bounds in cells.items():
            rows = [(a, b) for a, b in cell_bounds if b > a]
            if len(rows) == 1:
                img_k, img_v = k_i[:, rows[0][0] : rows[0][1]], v_i[:, rows[0][0] : rows[0][1]]
            else:
                img_k = torch.cat([k_i[:, a:b] for a, b in rows] or [k_i[:, :0]], dim=1)
                img_v = torch.cat([v_i[:, a:b] for a, b in rows] or [v_i[:, :0]], dim=1)
            out_t[:, s0:s1] = self._attend(
                q_t[:, s0:s1], self._keys(k_t[:, s0:s1], img_k), self._keys(v_t[:, s0:s1], img_v)
            )
        for s0, s1 in wide:
            out_t[:, s0:s1] = self._attend(
                q_t[:, s0:s1], self._keys(k_t[:, s0:s1], k_i), self._keys(v_t[:, s0:s1], v_i)
            )

        if index.inverse is not None:
            out_i = out_i.index_select(1, index.inverse)
        return out_t, out_i

    def _painted(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        q_i: torch.Tensor,
        k_i: torch.Tensor,
        v_i: torch.Tensor,
        index: RegionIndex,
        regional: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A soft canvas grid (shared positions): every painter's weighted term, scatter-added.

        Image token ``p``: ``Σ_r w_r(p)·[(1 − β_r)·Attn(q_p, text(r) ∪ I_r(p)) + β_r·Attn(q_p,
        text(base) ∪ I_r(p))]`` with the background a painter of its own text and ``β = 0``;
        ``I_r(p)`` is every image token (global) or the ones ``r`` paints (region). Each painter
        attends with the queries it paints only, gathered; with global image attention the base
        term is the same for every painter and is attended once by every query; where the
        kernel gives log-sum-exps, the image keys too (:mod:`rpg.attention.joint_soft`).
        """
        regions = self.regions
        out_t = torch.zeros_like(q_t)
        wide = {s for s in (regions.base_span, regions.global_span) if s is not None}
        cells = regions.text_cells(index, q_i.device)
        for (s0, s1), where in cells.items():
            if (s0, s1) in wide or s1 <= s0:
                continue
            img_k, img_v = k_i.index_select(1, where), v_i.index_select(1, where)
            out_t[:, s0:s1] = self._attend(
                q_t[:, s0:s1], self._keys(k_t[:, s0:s1], img_k), self._keys(v_t[:, s0:s1], img_v)
            )
        for s0, s1 in wide:
            out_t[:, s0:s1] = self._attend(
                q_t[:, s0:s1], self._keys(k_t[:, s0:s1], k_i), self._keys(v_t[:, s0:s1], v_i)
            )
        if not regional:
            assert regions.global_span is not None  # checked by JointRegions
            g0, g1 = regions.global_span
            out_i = self._attend(
                q_i, self._keys(k_t[:, g0:g1], k_i), self._keys(v_t[:, g0:g1], v_i)
            )
            return out_t, out_i

        global_image = regions.options.image_attention == "global"
        spans = regions.painter_spans
        if global_image and self._merges_base(q_i):
            return out_t, painted_image_merged(
                q_i, k_i, v_i, k_t, v_t, index, spans, regions.base_span
            )
        out_i = torch.zeros_like(q_i)
        for painter in index.painters:
            s0, s1 = spans[painter.region]
            where = painter.index
            beta = painter.base_weight
            queries = q_i.index_select(1, where)
            if global_image:
                img_k, img_v = k_i, v_i
            else:
                img_k, img_v = k_i.index_select(1, where), v_i.index_select(1, where)
            weight = painter.weight.to(q_i.dtype)
            term = None
            if not (global_image and beta >= 1):
                term = self._attend(
                    queries, self._keys(k_t[:, s0:s1], img_k), self._keys(v_t[:, s0:s1], img_v)
                )
            if beta > 0 and not global_image:
                assert regions.base_span is not None
                b0, b1 = regions.base_span
                base = self._attend(
                    queries, self._keys(k_t[:, b0:b1], img_k), self._keys(v_t[:, b0:b1], img_v)
                )
                term = base if term is None else term.lerp(base, beta)
            elif beta > 0:
                weight = weight * (1 - beta)
            if term is not None:
                out_i.index_add_(1, where, term * weight)
        if global_image and index.base_coef is not None:
            assert regions.base_span is not None
            b0, b1 = regions.base_span
            base = self._attend(q_i, self._keys(k_t[:, b0:b1], k_i), self._keys(v_t[:, b0:b1], v_i))
            out_i.addcmul_(base, index.base_coef.to(out_i.dtype).view(1, -1, 1, 1))
        return out_t, out_i

    def _present(self, index: RegionIndex) -> list[tuple[Span, tuple[int, int]]]:
        """``(text span, image bounds)`` of every region that has image tokens at this size."""
        pairs = zip(self.regions.painter_spans, index.bounds, strict=True)
        return [(span, bounds) for span, bounds in pairs if bounds[1] > bounds[0]]

    def _regional_image(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        q_i: torch.Tensor,
        k_i: torch.Tensor,
        v_i: torch.Tensor,
        index: RegionIndex,
        global_image: bool,
    ) -> torch.Tensor:
        """Image outputs (permuted order) of a regional call, base blend included."""
        regions = self.regions
        if index.base_weights is not None and self._merges_base(q_i):
            return self._regional_image_merged(q_t, k_t, v_t, q_i, k_i, v_i, index, global_image)
        out_i = torch.empty_like(q_i)
        n_img = k_i.shape[1]
        present = self._present(index)
        if global_image:
            # One buffer holds the image keys once; each region's text goes next to them.
            longest = max(s1 - s0 for (s0, s1), _ in present)
            shape = (k_i.shape[0], longest + n_img, *k_i.shape[2:])
            buf_k, buf_v = k_i.new_empty(shape), v_i.new_empty(shape)
            if self.image_first:
                buf_k[:, :n_img], buf_v[:, :n_img] = k_i, v_i
            else:
                buf_k[:, longest:], buf_v[:, longest:] = k_i, v_i
            for (s0, s1), (a, b) in present:
                n = s1 - s0
                if torch.is_grad_enabled():  # the buffer is rewritten in place; keep autograd exact
                    keys, values = self._keys(k_t[:, s0:s1], k_i), self._keys(v_t[:, s0:s1], v_i)
                elif self.image_first:
                    buf_k[:, n_img : n_img + n], buf_v[:, n_img : n_img + n] = (
                        k_t[:, s0:s1],
                        v_t[:, s0:s1],
                    )
                    keys, values = buf_k[:, : n_img + n], buf_v[:, : n_img + n]
                else:
                    buf_k[:, longest - n : longest] = k_t[:, s0:s1]
                    buf_v[:, longest - n : longest] = v_t[:, s0:s1]
                    keys, values = buf_k[:, longest - n :], buf_v[:, longest - n :]
                out_i[:, a:b] = self._attend(q_i[:, a:b], keys, values)
        else:
            for (s0, s1), (a, b) in present:
                out_i[:, a:b] = self._attend(
                    q_i[:, a:b],
                    self._keys(k_t[:, s0:s1], k_i[:, a:b]),
                    self._keys(v_t[:, s0:s1], v_i[:, a:b]),
                )
        if index.base_weights is None:
            return out_i
        assert regions.base_span is not None
        b0, b1 = regions.base_span
        if global_image:
            base = self._attend(q_i, self._keys(k_t[:, b0:b1], k_i), self._keys(v_t[:, b0:b1], v_i))
        else:
            base = torch.empty_like(out_i)
            for _, (a, b) in present:
                base[:, a:b] = self._attend(
                    q_i[:, a:b],
                    self._keys(k_t[:, b0:b1], k_i[:, a:b]),
                    self._keys(v_t[:, b0:b1], v_i[:, a:b]),
                )
        if index.uniform_base_weight is not None:
            return out_i.lerp_(base, index.uniform_base_weight)
        weight = index.base_weights.to(out_i.dtype).view(1, -1, 1, 1)
        return out_i.lerp_(base, weight)

    def _merges_base(self, q_i: torch.Tensor) -> bool:
        """Whether the base term can share the image attention (see ``_regional_image_merged``).

        It needs the log-sum-exp of each partial attention, which diffusers' default (native)
        backend does not return; with another backend chosen, with context parallelism, or with
        autograd on (no gradient flows through the log-sum-exp) the two attentions stay separate,
        which is exact too, only costlier.
        """
        if torch.is_grad_enabled() or self._parallel_config is not None:
            return False
        backend = self._attention_backend
        if backend is None:
            backend = _AttentionBackendRegistry.get_active_backend()[0]
        return bool(backend == AttentionBackendName.NATIVE) and q_i.device.type in _LSE_DEVICES

    def _regional_image_merged(
        self,
        q_t: torch.Tensor,
        k_t: torch.Tensor,
        v_t: torch.Tensor,
        q_i: torch.Tensor,
        k_i: torch.Tensor,
        v_i: torch.Tensor,
        index: RegionIndex,
        global_image: bool,
    ) -> torch.Tensor:
        """The base blend with the image keys attended once.

        A region's image query reads ``text(r) ∪ I(p)`` and ``text(base) ∪ I(p)``; both share
        ``I(p)``. Each key set is attended on its own with its log-sum-exp (``I(p)`` once, the
        two texts are short), and the three partial results are merged exactly: the region term
        is ``σ(lse_I − lse_r)·attn(I) + σ(lse_r − lse_I)·attn(r)``, likewise the base term, and
        ``β_r`` blends the two. The image-to-image attention, the bulk of the cost, is then paid
        once, as in the stock block, instead of twice.
        """
        regions = self.regions
        assert regions.base_span is not None and index.base_weights is not None
        b0, b1 = regions.base_span
        qi, ki, vi = (x.transpose(1, 2) for x in (q_i, k_i, v_i))  # [B, H, L, D]
        kt, vt = k_t.transpose(1, 2), v_t.transpose(1, 2)
        present = self._present(index)
        if global_image:
            o_img, l_img = attention_with_lse(qi, ki, vi)
        else:
            o_img, l_img = torch.empty_like(qi), qi.new_empty(qi.shape[:-1], dtype=torch.float32)
            for _, (a, b) in present:
                o_img[:, :, a:b], l_img[:, :, a:b] = attention_with_lse(
                    qi[:, :, a:b], ki[:, :, a:b], vi[:, :, a:b]
                )
        o_base, l_base = attention_with_lse(qi, kt[:, :, b0:b1], vt[:, :, b0:b1])
        o_reg, l_reg = torch.empty_like(qi), qi.new_empty(qi.shape[:-1], dtype=torch.float32)
        for (s0, s1), (a, b) in present:
            o_reg[:, :, a:b], l_reg[:, :, a:b] = attention_with_lse(
                qi[:, :, a:b], kt[:, :, s0:s1], vt[:, :, s0:s1]
            )
        if index.uniform_base_weight is not None:
            beta: torch.Tensor | float = index.uniform_base_weight
        else:
            beta = index.base_weights.to(device=qi.device, dtype=torch.float32).view(1, 1, -1)
        image_in_region = merge_weight(l_img, l_reg)
        image_in_base = merge_weight(l_img, l_base)
        w_img = (1 - beta) * image_in_region + beta * image_in_base
        w_reg = (1 - beta) * (1 - image_in_region)
        w_base = beta * (1 - image_in_base)
        # One float32 accumulator (o_img is ours to overwrite when it already is float32).
        out = o_img.float().mul_(w_img.unsqueeze(-1))
        out.addcmul_(o_reg, w_reg.unsqueeze(-1)).addcmul_(o_base, w_base.unsqueeze(-1))
        return out.to(q_i.dtype).transpose(1, 2)
