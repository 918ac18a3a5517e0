"""The regional cross-attention processor.

For every region ``r`` with cell ``R_r``, token span ``S_r`` and base weight ``β_r``::

    out[R_r] = (1 − β_r) · Attn(x[R_r], ctx[S_r]) + β_r · Attn(x[R_r], ctx[S_base])

computed with one ``to_q`` over all queries, one ``to_k``/``to_v`` over the packed context, one
scaled-dot-product attention per region on that region's query rows and token span, one attention
of all queries against the base span when some ``β_r > 0``, and one ``to_out``. Attention work is
therefore the stock layer's work plus the base term; nothing runs once per region over the whole
canvas.

Canvas plans (layers of boxes and masks over a background, see DESIGN.md) use the same code:
on a grid where every position has one painter (hard boxes and masks) the background is one
more region, reading the base prompt or the whole prompt packed for it, so a canvas costs what a
grid costs. On a grid with shared positions (soft edges, translucent masks) every layer attends
with the queries it paints, gathered, and adds its weighted result
(:mod:`rpg.attention.soft_canvas`).

What remains is the projection: ``to_k``/``to_v`` see ``R + 1`` prompts' tokens instead of one.
With ``cache_kv=True`` each layer projects the text context once per pipeline call and reuses
the keys and values at every later step, bit-identical (:mod:`rpg.attention.kv_cache` says when
a cached projection is still right).

Under ``torch.compile`` nothing in the call reads a tensor's value or changes Python state that
the compiled code depends on: region indices are built before the loop (:meth:`prepare`), the
counters are not touched, and the cache is read from fixed slots filled before the loop
(:meth:`prefill`, done by ``regional`` when it finds a compiled model), one per layer and batch
half, instead of being filled on the first step. A slot whose shape or dtype does not match the
call's context is ignored and the layer projects as usual.

A region may carry LoRA adapters of its own (:mod:`rpg.attention.region_lora`): its keys and
values are projected with their low-rank updates added, from its own span only. With a shared
negative prompt and region LoRAs, the negative half follows the regional formula too, that
prompt in every region's place.

Context rows that are copies of one another (several images per prompt, known from the
conditioning's shapes: :attr:`~rpg.attention.spec.RegionalConditioning.shared_rows`) are
projected once and expanded as views, so neither the projection nor the cache grows with the
number of images, and no call waits on the device to find that out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from rpg.attention.kv_cache import _adapter_state as _adapter_state
from rpg.attention.kv_cache import _fingerprint, _Projected, slot_projections
from rpg.attention.kv_cache import _version as _version
from rpg.attention.region_lora import lora_projection
from rpg.attention.regions import RegionIndex, region_index
from rpg.attention.soft_canvas import paint_soft
from rpg.attention.spec import PainterSpans, RegionalConditioning, RegionalLayout, Span
from rpg.layout import latent_grid_for_tokens, latent_grids

__all__ = ["RegionalAttnProcessor", "image_tokens"]


def image_tokens(
    hidden_states: torch.Tensor, layout: RegionalLayout
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A layer's input as ``[B, h·w, C]`` tokens and its latent grid ``(h, w)``.

    A ``[B, C, h, w]`` input (an attention block on feature maps) is flattened; a token input's
    grid is recovered from its length and the image size.
    """
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        return hidden_states.view(b, c, h * w).transpose(1, 2), (h, w)
    grid = latent_grid_for_tokens(
        hidden_states.shape[1], layout.height, layout.width, factor=layout.latent_factor
    )
    return hidden_states, grid


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, H·d]`` → ``[B, H, N, d]`` (a view)."""
    b, n, inner = x.shape
    return x.view(b, n, heads, inner // heads).transpose(1, 2)


class RegionalAttnProcessor:
    """A diffusers attention processor that confines each region's queries to its own prompt.

    It reads only the token spans of ``conditioning`` (the tensors are not kept) and the geometry
    of ``layout``. With ``guidance=True`` the batch is ``[negative, positive]`` as the stock
    pipelines build it for classifier-free guidance: with one shared negative prompt the negative
    half is plain attention over ``negative_span`` (the whole context when that is ``None``); with
    per-region negatives it follows the regional formula over the negative spans, using
    ``negative_base_span`` (else ``negative_span``) for the base term.

    One instance may serve every layer: index tensors are cached per grid size and device.

    With ``cache_kv=True`` each layer's projected keys and values are kept and reused while the
    context tensor, its contents and the projection weights are unchanged (see the module
    docstring); :meth:`clear_cache` frees them. ``regional`` clears the cache when its block
    exits, so a cache never outlives one installation.
    """

    def __init__(
        self,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        guidance: bool,
        cache_kv: bool = False,
    ) -> None:
        spans = PainterSpans.resolve(conditioning, layout, guidance=guidance)
        self.layout = layout
        self.guidance = guidance
        self.region_spans: tuple[Span, ...] = spans.region_spans
        self.base_span: Span | None = spans.base_span
        self.negative_span: Span | None = spans.negative_span
        self.negative_region_spans: tuple[Span, ...] | None = spans.negative_region_spans
        self.negative_base_span: Span | None = spans.negative_base_span
        #: What positive queries read in steps that are not regional (``regional_steps``): the
        #: base prompt, else the whole prompt packed for it; ``None`` when neither is packed.
        self.global_span: Span | None = conditioning.base_span or conditioning.global_span
        #: Whether this step is regional; :class:`~rpg.attention.regional_steps.RegionalStepSwitch`
        #: turns it off after the regional steps (a Python flag: compiled code recompiles once).
        self.regional = True
        # Decided once, from shapes: comparing context rows per call would wait on the device.
        self.shared_rows = conditioning.shared_rows
        #: Per region, the LoRA adapters acting on its text only (see :mod:`rpg.lora`).
        self.region_loras = conditioning.region_loras
        if self.region_loras is not None and not any(self.region_loras):
            self.region_loras = None
        self._indices: dict[tuple[int, int, torch.device], RegionIndex] = {}
        self._plain_processor = AttnProcessor2_0()
        self.cache_kv = cache_kv
        self._projected: dict[tuple[int, int, int, int, int], _Projected] = {}
        #: Keys and values projected before the loop, per (layer, batch half): read by compiled
        #: code, which cannot fill or check a cache at run time (see :meth:`prefill`).
        self._slots: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        #: Key/value projections computed, and answered from the cache, by this processor.
        self.projections = 0
        self.cache_hits = 0

    def clear_cache(self) -> None:
        """Drop every cached key and value (and the context tensors they were made from)."""
        self._projected.clear()
        self._slots.clear()

    @property
    def cache_bytes(self) -> int:
        """Memory held by cached keys and values."""
        pairs = [(p.key, p.value) for p in self._projected.values()] + list(self._slots.values())
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pairs)

    def prepare(self, device: torch.device | str, levels: int = 6) -> None:
        """Build the region index of every latent grid a UNet sees at this size, on ``device``.

        Done before the denoising loop (``regional`` does it on the conditioning's device) so
        that no call builds one: building reads index tensors on the host, which compiled code
        cannot do without a graph break. A grid not built here is still built on first use.
        """
        device = torch.device(device)
        size = (self.layout.height, self.layout.width)
        for h, w in latent_grids(*size, factor=self.layout.latent_factor, levels=levels):
            self.index_for(h, w, device)

    def prefill(
        self, attn: Attention, conditioning: RegionalConditioning, device: torch.device | str
    ) -> None:
        """Project ``attn``'s keys and values of both batch halves now, into fixed slots.

        Compiled code reads these slots instead of the run-time cache (whose checks read tensor
        pointers and versions, which a compiled graph cannot); which rows, and where they are
        projected: :func:`~rpg.attention.kv_cache.slot_projections`.
        """
        negative_span = self.negative_span if self.negative_region_spans is None else None
        slots = slot_projections(
            attn,
            conditioning,
            device,
            self._project,
            negative=self.guidance,
            negative_span=negative_span,
        )
        self._slots.update({(id(attn), kind): found for kind, found in slots.items()})

    @property
    def indices(self) -> list[RegionIndex]:
        """Every region index built so far (by :meth:`prepare` or on first use)."""
        return list(self._indices.values())

    def index_for(self, h: int, w: int, device: torch.device) -> RegionIndex:
        """The cached :class:`RegionIndex` of an ``h × w`` grid on ``device``."""
        key = (h, w, device)
        found = self._indices.get(key)
        if found is None:
            found = self._indices[key] = region_index(self.layout, h, w, device)
        return found

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            # Self-attention is never installed with this processor; stay correct if it happens.
            return self._plain_processor(attn, hidden_states, None, attention_mask, temb)
        if not isinstance(encoder_hidden_states, torch.Tensor):
            # IP-Adapter UNets pass (text, [image embeddings]); those layers need IP-Adapter's
            # own processors, which this one would replace.
            raise TypeError(
                "regional attention got encoder_hidden_states of type "
                f"{type(encoder_hidden_states).__name__}, not a tensor: the model passes extra "
                "context (an IP-Adapter is loaded?), which regional attention cannot serve; "
                "unload it (pipe.unload_ip_adapter()) to render regionally"
            )

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        hidden_states, grid = image_tokens(hidden_states, self.layout)
        batch, n_tokens, _ = hidden_states.shape
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"context batch {encoder_hidden_states.shape[0]} differs from query batch {batch}"
            )
        if self.guidance and batch % 2:
            raise ValueError(
                f"guidance=True expects a [negative, positive] batch of even size, got {batch}"
            )
        index = self.index_for(*grid, hidden_states.device)

        context_tokens = encoder_hidden_states.shape[1]
        mask = self._mask(attn, attention_mask, context_tokens, batch, n_tokens, index)

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if index.perm is not None:
            hidden_states = hidden_states.index_select(1, index.perm)
        context = encoder_hidden_states

        query = _heads(attn.to_q(hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        # [B, N, H, d]: every region's attention is written straight into its rows.
        out = query.new_empty(batch, attn.heads, n_tokens, query.shape[-1]).transpose(1, 2)

        positive = slice(batch // 2, batch) if self.guidance else slice(0, batch)
        if self.guidance:
            self._negative_half(attn, query, context, mask, index, out, slice(0, batch // 2))
        if self.regional:
            self._regional(
                attn, query, context, mask, index, out, positive, self.region_spans, self.base_span
            )
        else:
            span = self.global_span or (0, context.shape[1])
            self._plain(attn, query, context, mask, out, positive, span)

        hidden_states = out.reshape(batch, n_tokens, -1).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if index.inverse is not None:
            hidden_states = hidden_states.index_select(1, index.inverse)
        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _mask(
        attn: Attention,
        attention_mask: torch.Tensor | None,
        context_tokens: int,
        batch: int,
        n_tokens: int,
        index: RegionIndex,
    ) -> torch.Tensor | None:
        """The layer's attention mask as ``[B, H, N or 1, T]``, query rows in the index's
        (permuted) order; ``None`` without one."""
        if attention_mask is None:
            return None
        mask = attn.prepare_attention_mask(attention_mask, context_tokens, batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
        if index.perm is not None and mask.shape[2] == n_tokens:
            mask = mask.index_select(2, index.perm)
        return mask

    def _negative_half(
        self,
        attn: Attention,
        query: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        index: RegionIndex,
        out: torch.Tensor,
        negative: slice,
    ) -> None:
        """Write the negative (unconditional) half of a guided batch into ``out``: plain
        attention over one shared negative prompt, else the regional formula over the
        per-region negatives (or over the shared prompt when regions carry their own LoRAs)."""
        if self.negative_region_spans is not None:
            spans, base_span = self.negative_region_spans, self.negative_base_span
        elif self.region_loras is not None:
            # Region LoRAs change what each region reads of the shared negative prompt too:
            # the regional formula with that prompt in every region's place and as the base.
            span = self.negative_span or (0, context.shape[1])
            spans, base_span = (span,) * len(self.region_spans), span
        else:
            span = self.negative_span or (0, context.shape[1])
            self._plain(attn, query, context, mask, out, negative, span)
            return
        self._regional(attn, query, context, mask, index, out, negative, spans, base_span)

    def _plain(
        self,
        attn: Attention,
        query: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        out: torch.Tensor,
        rows: slice,
        span: Span,
    ) -> None:
        """Every query of the batch ``rows`` attends to the tokens ``span``, as the stock layer
        attends to its whole context."""
        key, value = self._keys_values(attn, context, rows, span)
        part = F.scaled_dot_product_attention(
            query[rows], key, value, attn_mask=_cut(mask, rows, None, span)
        )
        out[rows].copy_(part.transpose(1, 2))

    def _keys_values(
        self, attn: Attention, context: torch.Tensor, rows: slice, span: Span
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context[rows, span]`` (``[B, H, T, d]``), cached if enabled.

        ``context`` is the layer's raw ``encoder_hidden_states``: the cache is keyed on it, so
        ``norm_cross`` runs inside, on a miss only.
        """
        copies = (rows.stop or context.shape[0]) - (rows.start or 0)
        if torch.compiler.is_compiling():
            # No run-time cache in compiled code: read a slot filled before the loop, if any.
            kind = "negative" if self.guidance and (rows.start or 0) == 0 else "positive"
            found = self._slots.get((id(attn), kind))
            if (
                found is not None
                and found[0].shape[2] == span[1] - span[0]
                and found[0].dtype == context.dtype
            ):
                key, value = found
                if key.shape[0] != copies:
                    key = key.expand(copies, -1, -1, -1)
                    value = value.expand(copies, -1, -1, -1)
                return key, value
            return self._project_rows(attn, context, rows, span, copies)
        if self.cache_kv:
            slot = (id(attn), rows.start or 0, rows.stop, span[0], span[1])
            fingerprint = _fingerprint(attn, context)
            cached = self._projected.get(slot)
            if cached is not None and cached.fingerprint == fingerprint:
                self.cache_hits += 1
                return cached.key, cached.value
        key, value = self._project_rows(attn, context, rows, span, copies)
        self.projections += 1
        # With autograd on, a cached tensor would tie every step to the first step's graph.
        if self.cache_kv and not key.requires_grad:
            self._projected[slot] = _Projected(context, fingerprint, key, value)
        return key, value

    def _project_rows(
        self, attn: Attention, context: torch.Tensor, rows: slice, span: Span, copies: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context[rows, span]``, ``copies`` rows deep."""
        part = context[rows]
        # Several images per prompt repeat the same context rows: project one, view it n times.
        if copies > 1 and self.shared_rows:
            part = part[:1]
        key, value = self._project(attn, part, span)
        if key.shape[0] != copies:
            key = key.expand(copies, -1, -1, -1)
            value = value.expand(copies, -1, -1, -1)
        return key, value

    def _region_keys_values(
        self,
        attn: Attention,
        context: torch.Tensor,
        rows: slice,
        span: Span,
        adapters: tuple[tuple[str, float], ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context[rows, span]`` with a region's own LoRAs added.

        Projected on every call, not cached: the span is one prompt's tokens and the update is
        low-rank, so this is small next to the layer's attention.
        """
        copies = (rows.stop or context.shape[0]) - (rows.start or 0)
        part = context[rows]
        if copies > 1 and self.shared_rows:
            part = part[:1]
        key, value = lora_projection(attn, part, span, adapters)
        key, value = _heads(key, attn.heads), _heads(value, attn.heads)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if key.shape[0] != copies:
            key = key.expand(copies, -1, -1, -1)
            value = value.expand(copies, -1, -1, -1)
        return key, value

    @staticmethod
    def _project(
        attn: Attention, part: torch.Tensor, span: Span
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attn``'s keys and values of the tokens ``span`` of the context rows ``part``."""
        if attn.norm_cross:
            # Normalise whole rows, as the stock layer does: a group norm's statistics span tokens.
            part = attn.norm_encoder_hidden_states(part)
        part = part[:, span[0] : span[1]]
        key = _heads(attn.to_k(part), attn.heads)
        value = _heads(attn.to_v(part), attn.heads)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        return key, value

    def _regional(
        self,
        attn: Attention,
        query: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        index: RegionIndex,
        out: torch.Tensor,
        rows: slice,
        spans: tuple[Span, ...],
        base_span: Span | None,
    ) -> None:
        """Write the regional formula for the batch ``rows`` of ``out`` (permuted order)."""
        q = query[rows]
        key, value = self._keys_values(attn, context, rows, (0, context.shape[1]))
        target = out[rows]
        # the last painter of a canvas, the background, reads no region's LoRA
        loras = tuple(self.region_loras or ())
        loras += ((),) * (len(spans) - len(loras))

        def keys_values(painter: int, span: Span) -> tuple[torch.Tensor, torch.Tensor]:
            if loras[painter]:
                return self._region_keys_values(attn, context, rows, span, loras[painter])
            return key[:, :, span[0] : span[1]], value[:, :, span[0] : span[1]]

        if index.soft:
            base_mask = None if base_span is None else _cut(mask, rows, None, base_span)
            paint_soft(
                q, key, value, keys_values, mask, base_mask, index, target, rows, spans, base_span
            )
            return
        for painter, ((start, end), (k0, k1)) in enumerate(zip(index.bounds, spans, strict=True)):
            if start == end:
                continue
            k, v = keys_values(painter, (k0, k1))
            part = F.scaled_dot_product_attention(
                q[:, :, start:end], k, v, attn_mask=_cut(mask, rows, (start, end), (k0, k1))
            )
            target[:, start:end].copy_(part.transpose(1, 2))
        if index.base_weights is None or base_span is None:
            return
        k0, k1 = base_span
        base = F.scaled_dot_product_attention(
            q, key[:, :, k0:k1], value[:, :, k0:k1], attn_mask=_cut(mask, rows, None, base_span)
        ).transpose(1, 2)
        if index.uniform_base_weight is not None:
            target.lerp_(base, index.uniform_base_weight)
        else:
            weight = index.base_weights.to(target.dtype).unsqueeze(-1)  # [N, 1, 1]
            target.lerp_(base, weight)


def _cut(
    mask: torch.Tensor | None, rows: slice, queries: Span | None, keys: Span
) -> torch.Tensor | None:
    """The part of a ``[B, H, N or 1, T]`` mask for some batch rows, query rows and keys."""
    if mask is None:
        return None
    mask = mask[rows, :, :, keys[0] : keys[1]]
    if queries is not None and mask.shape[2] != 1:
        mask = mask[:, :, queries[0] : queries[1]]
    return mask
