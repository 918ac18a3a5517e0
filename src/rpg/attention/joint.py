"""Regional *joint* attention for MM-DiT models (FLUX.1, SD3 / SD3.5).

MM-DiT blocks have no cross-attention: text tokens and image tokens are concatenated and attend
jointly. With packed text ``[base | region 0 | … | region N−1]`` and image tokens on the patch
grid, every regional joint-attention call computes (see ``DESIGN.md``):

* image token ``p`` in cell ``R_r``: keys ``text(r) ∪ I(p)``, blended by ``β_r`` with keys
  ``text(base) ∪ I(p)``; ``I(p)`` is every image token (``image_attention="global"``, the
  default: image self-attention untouched, as RPG does in a UNet) or only ``R_r``'s
  (``"region"``, what the published FLUX regional-prompting methods do in their masked blocks);
* text token of region ``r``: keys ``text(r) ∪ image tokens of R_r``;
* text token of the base: keys ``text(base) ∪ all image tokens``;
* the negative half of a CFG batch: plain attention over the negative prompt, as stock.

In a call that is not regional (``regional_steps`` has passed, or a block skipped by
``regional_blocks``) image queries see ``text(base) ∪ all image tokens``; text keeps its rules.

Computed like :class:`~rpg.attention.processor.RegionalAttnProcessor`: the projections, norms and
RoPE run once over the whole joint sequence exactly as the stock processors run them; then every
region's queries are gathered (one permutation makes each region contiguous), attend to the keys
of their own set with one unmasked attention call each through diffusers' ``dispatch_attention_fn``
(so ``set_attention_backend`` still chooses the kernel), and are scattered back. No
``(T+P)²`` mask is built. With global image attention every region shares the image keys: they are
written once into a buffer and each region's text keys are written in front of (FLUX) or behind
(SD3) them, so no per-region copy of the image keys is made.

What this adds to the stock block: the packed text itself — text tokens pass through every
block's projections and MLPs, so the packed length is the cost driver — and, when some
``β_r > 0``, the base term. The base term shares ``I(p)`` with the region term, so the image keys
are attended once and the partial attentions over ``I(p)``, ``text(r)`` and ``text(base)`` are
merged exactly through their log-sum-exps (:mod:`rpg.attention.lse`); the image-to-image
attention is paid once, as in the stock block. That needs kernels returning the log-sum-exp
(diffusers' default backend, CPU or CUDA, no autograd); otherwise the two attentions are computed
separately, which gives the same result at the cost of one more image-to-image attention.

Under ``torch.compile`` (the transformer compiled whole, or its repeated blocks) a call reads
nothing from the device and no Python state that changes from one step to the next: the region
index is built before the loop (:meth:`JointRegions.prepare`), which half of a CFG pair a call is
comes from the batch size (SD3), the identity of the embeddings (FLUX) or the order of calls
(FLUX.2), and the step for ``regional_steps`` from the pipeline's step-end callback
(:meth:`JointRegions.step_callback`), as one flag that flips once, so a run compiles at most
one more graph, at the step where the image stops being regional.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    dispatch_attention_fn,
)
from diffusers.models.embeddings import apply_rotary_emb

from rpg.attention.flux2_layers import is_flux2, is_flux2_single_stream
from rpg.attention.lse import attention_with_lse, merge_weight
from rpg.attention.regions import RegionIndex, region_index
from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span

__all__ = [
    "FluxRegionalAttnProcessor",
    "JointAttentionOptions",
    "JointRegions",
    "SD3RegionalAttnProcessor",
    "regional_joint",
]

ImageAttention = Literal["global", "region"]
#: How a call's batch is split: all positive rows, all negative rows, or ``[negative, positive]``.
Rows = Literal["positive", "negative", "negative+positive"]
#: Devices whose fused attention kernels return the log-sum-exp (``meta``: FLOP counting).
_LSE_DEVICES = ("cpu", "cuda", "meta")


@dataclass(frozen=True)
class JointAttentionOptions:
    """How regional the joint attention is.

    ``image_attention``: what an image token sees of the image (``"global"``: all of it, RPG's own
    semantics; ``"region"``: only its region's cell). ``regional_steps``: the fraction of the
    denoising steps that are regional (the first ``ceil(fraction · steps)``); later steps follow
    the stock forward with the base prompt (or the whole prompt). ``regional_blocks``: every
    k-th attention block (counting double- then single-stream blocks for FLUX, from 0) is
    regional; image queries in the others see the base prompt and every image token.

    The published training-free regional prompting method for FLUX (arXiv 2411.02395) masks
    image attention to regions, injects its mask in the first steps (10 of 24 in its examples)
    and in every block, with a base ratio of 0.2–0.3:
    ``JointAttentionOptions(image_attention="region", regional_steps=0.4, regional_blocks=1)``
    with a plan ``base_ratio=0.2`` is that choice in these terms. It differs in that its base
    branch reads every image token and, in single-stream blocks, keeps its own image stream.
    """

    image_attention: ImageAttention = "global"
    regional_steps: float = 1.0
    regional_blocks: int = 1

    def __post_init__(self) -> None:
        if self.image_attention not in ("global", "region"):
            raise ValueError(
                f"image_attention must be 'global' or 'region', got {self.image_attention!r}"
            )
        if not 0 < self.regional_steps <= 1:
            raise ValueError(
                f"regional_steps is a fraction of the steps in (0, 1], got {self.regional_steps}"
            )
        if self.regional_blocks < 1:
            raise ValueError(f"regional_blocks must be at least 1, got {self.regional_blocks}")

    def regional_step_count(self, steps: int) -> int:
        """How many of ``steps`` denoising steps are regional."""
        return max(1, math.ceil(self.regional_steps * steps - 1e-9))


@dataclass
class _RunState:
    """What the transformer's forward pre-hook learns about the call about to run."""

    rows: Rows = "positive"
    step: int = 0
    last_timestep: float | None = None
    #: Whether this step is regional (``regional_steps``); the only step fact processors read.
    regional: bool = True
    #: The step is told by the pipeline's step-end callback (:meth:`JointRegions.step_callback`)
    #: rather than read from the timestep.
    driven: bool = False
    #: FLUX.2 CFG: the next forward is the negative one (the pipeline alternates them).
    negative_next: bool = False

    def reset(self) -> None:
        """A new pipeline call (``driven`` stays: the callback that drives it is in place)."""
        self.rows, self.step, self.last_timestep = "positive", 0, None
        self.regional, self.negative_next = True, False


class _StepCallback:
    """A ``callback_on_step_end`` that tells :class:`JointRegions` the next step, then chains.

    Keeps the caller's ``tensor_inputs`` (a diffusers ``PipelineCallback``), so the pipeline
    hands over the same tensors it would have without rpg.
    """

    def __init__(self, regions: JointRegions, callback: Any) -> None:
        self.regions = regions
        self.callback = callback
        regions.state.driven = True  # from the first step on: no timestep is read
        tensor_inputs = getattr(callback, "tensor_inputs", None)
        if tensor_inputs is not None:
            self.tensor_inputs = list(tensor_inputs)

    def __call__(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.regions.set_step(step + 1)
        if self.callback is None:
            return {}
        result: dict[str, Any] = self.callback(pipe, step, timestep, callback_kwargs)
        return result


@dataclass
class JointRegions:
    """Everything the joint processors of one model share: spans, geometry, options, run state.

    ``global_span`` is the text that non-regional image queries read: the base span, or, when
    the plan has no base prompt, the span of the whole prompt packed for that purpose (needed only
    when ``regional_steps < 1`` or ``regional_blocks > 1``). ``negative_span`` is the negative
    prompt's tokens in the negative rows (``None``: all of them).
    """

    region_spans: tuple[Span, ...]
    layout: RegionalLayout
    base_span: Span | None = None
    global_span: Span | None = None
    negative_span: Span | None = None
    options: JointAttentionOptions = field(default_factory=JointAttentionOptions)
    steps: int | None = None
    text_length: int | None = None
    #: Where the pipeline runs (the conditioning's device): region indices are built there.
    device: torch.device | None = None
    #: Copies of the patch grid among the image tokens: 2 when FLUX.2 [klein] inpainting
    #: appends the image to repaint as condition tokens (see :mod:`rpg.attention.regions`).
    grid_copies: int = 1
    state: _RunState = field(default_factory=_RunState)
    _indices: dict[tuple[int, int, torch.device], RegionIndex] = field(default_factory=dict)
    #: Soft canvas grids: the image positions each region text span sees (the union of the
    #: cells of the layers sharing that prompt), built with the index.
    _text_cells: dict[tuple[int, int, torch.device], dict[Span, torch.Tensor]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        if len(self.region_spans) != self.layout.num_regions:
            raise ValueError(
                f"{len(self.region_spans)} region spans but the layout has "
                f"{self.layout.num_regions} regions"
            )
        if any(b > 0 for b in self.layout.base_weights) and self.base_span is None:
            raise ValueError("the layout blends a base prompt (base weight > 0) but no base_span")
        if self.global_span is None:
            self.global_span = self.base_span
        opts = self.options
        if (opts.regional_steps < 1 or opts.regional_blocks > 1) and self.global_span is None:
            raise ValueError(
                "regional_steps < 1 or regional_blocks > 1 needs the text that non-regional "
                "calls read: a base_span, or a global_span holding the whole prompt"
            )
        if opts.regional_steps < 1 and self.steps is None:
            raise ValueError("regional_steps < 1 needs the number of denoising steps")
        if self.layout.has_background and self.global_span is None:
            raise ValueError(
                "the canvas leaves background to paint but there is no text for it: a base_span, "
                "or a global_span holding the whole prompt"
            )

    @property
    def painter_spans(self) -> tuple[Span, ...]:
        """The text span of every painter: the regions', then (a canvas) the background's,
        which is the base prompt, else the whole prompt (``(0, 0)`` where no background is
        ever painted)."""
        if self.layout.canvas is None:
            return self.region_spans
        return (*self.region_spans, self.global_span or (0, 0))

    @classmethod
    def from_conditioning(
        cls,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        options: JointAttentionOptions | None = None,
        steps: int | None = None,
        global_span: Span | None = None,
    ) -> JointRegions:
        """Read the spans of packed embeddings (``conditioning``) for ``layout``."""
        return cls(
            region_spans=tuple(conditioning.region_spans),
            layout=layout,
            base_span=conditioning.base_span,
            global_span=global_span,
            negative_span=conditioning.negative_span,
            options=options or JointAttentionOptions(),
            steps=steps,
            text_length=int(conditioning.prompt_embeds.shape[1]),
            device=conditioning.prompt_embeds.device,
        )

    def index_for(self, n_image: int, device: torch.device) -> RegionIndex:
        """The region index of the patch grid holding ``n_image`` tokens."""
        factor = self.layout.latent_factor
        h, w = self.layout.height // factor, self.layout.width // factor
        if h * w * self.grid_copies != n_image:
            copies = f" ({self.grid_copies} copies)" if self.grid_copies > 1 else ""
            raise ValueError(
                f"the joint sequence has {n_image} image tokens but a "
                f"{self.layout.width}x{self.layout.height} image has {h}x{w} patches{copies} of "
                f"{factor} pixels; is the layout made for the size being generated?"
            )
        key = (h, w, device)
        found = self._indices.get(key)
        if found is None:
            found = self._indices[key] = region_index(
                self.layout, h, w, device, copies=self.grid_copies
            )
            if found.soft:
                self._text_cells[key] = self._soft_text_cells(found, device)
        return found

    def _soft_text_cells(
        self, index: RegionIndex, device: torch.device
    ) -> dict[Span, torch.Tensor]:
        """Per region text span, the sorted image positions its layers paint (host work, once)."""
        spans = self.painter_spans
        cells: dict[Span, set[int]] = {}
        for painter in index.painters:
            if painter.region < len(self.region_spans):
                cells.setdefault(spans[painter.region], set()).update(painter.index.cpu().tolist())
        for span in self.region_spans:
            cells.setdefault(span, set())
        return {
            span: torch.tensor(sorted(where), dtype=torch.long, device=device)
            for span, where in cells.items()
        }

    def text_cells(self, index: RegionIndex, device: torch.device) -> dict[Span, torch.Tensor]:
        """The image positions every region text span sees on a soft grid (see ``index_for``)."""
        return self._text_cells[(index.height, index.width, device)]

    def prepare(self, device: torch.device | str | None = None) -> None:
        """Build the patch grid's region index on ``device`` (default :attr:`device`) now.

        ``regional_joint`` calls it before the loop, so that no call builds one (building reads
        index tensors on the host, a graph break in compiled code).
        """
        device = device if device is not None else self.device
        if device is None:
            return
        factor = self.layout.latent_factor
        h, w = self.layout.height // factor, self.layout.width // factor
        self.index_for(h * w * self.grid_copies, torch.device(device))

    def step_is_regional(self) -> bool:
        """Whether the step being run is regional (a flag set between steps, never per call)."""
        return self.state.regional

    def set_step(self, step: int) -> None:
        """The pipeline is about to run step ``step`` (0-based): update the regional flag."""
        self.state.driven = True
        self.state.step = step
        self._update_regional()

    def _update_regional(self) -> None:
        if self.options.regional_steps >= 1 or self.steps is None:
            regional = True
        else:
            regional = self.state.step < self.options.regional_step_count(self.steps)
        if regional != self.state.regional:  # a write compiled code would see: only on change
            self.state.regional = regional

    def step_callback(self, callback: Any = None) -> Any:
        """A ``callback_on_step_end`` that tells these regions the step, chaining ``callback``.

        The step then comes from the pipeline's loop rather than from reading the timestep on
        the host in every forward, which a compiled transformer cannot do. Only needed with
        ``regional_steps < 1``; ``callback`` is returned unchanged otherwise.
        """
        if self.options.regional_steps >= 1:
            return callback
        return _StepCallback(self, callback)


# ---------------------------------------------------------------------------------------- core


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
        term is the same for every painter and is attended once by every query.
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


# ---------------------------------------------------------------------------------- processors


_Projections = tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
]


def _projections(
    attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
) -> _Projections:
    """q, k, v of the image stream and (or ``None``) of the text stream, fused or not."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        if encoder_hidden_states is None:
            return q, k, v, None, None, None
        eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        return q, k, v, eq, ek, ev
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    if encoder_hidden_states is None:
        return q, k, v, None, None, None
    eq = attn.add_q_proj(encoder_hidden_states)
    ek = attn.add_k_proj(encoder_hidden_states)
    ev = attn.add_v_proj(encoder_hidden_states)
    return q, k, v, eq, ek, ev


def _rope(x: torch.Tensor, freqs: Any) -> torch.Tensor:
    # diffusers annotates a tuple, but with use_real it returns one tensor
    out: torch.Tensor = apply_rotary_emb(x, freqs, sequence_dim=1)  # type: ignore[assignment]
    return out


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


class FluxRegionalAttnProcessor(_JointAttention):
    """Regional joint attention for FLUX.1's double-stream and single-stream blocks.

    Mirrors the stock ``FluxAttnProcessor``'s projections (fused or not), RMS norms and RoPE
    (text ids are part of the rotary table), then attends regionally. In a single-stream block
    the hidden states are the joint ``[text | image]`` sequence; its text length is the packed
    length.
    """

    def __init__(self, regions: JointRegions, *, regional_block: bool = True) -> None:
        super().__init__(regions, regional_block=regional_block, image_first=False)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        if attention_mask is not None:
            raise ValueError("regional joint attention does not take an attention_mask")
        q, k, v, eq, ek, ev = _projections(attn, hidden_states, encoder_hidden_states)
        heads = (-1, attn.head_dim)
        q, k, v = attn.norm_q(q.unflatten(-1, heads)), attn.norm_k(k.unflatten(-1, heads)), v
        v = v.unflatten(-1, heads)
        if eq is not None and ek is not None and ev is not None:
            eq = attn.norm_added_q(eq.unflatten(-1, heads))
            ek = attn.norm_added_k(ek.unflatten(-1, heads))
            q, k, v = _cat(eq, q), _cat(ek, k), _cat(ev.unflatten(-1, heads), v)
            n_text = eq.shape[1]
        else:
            n_text = self.regions.text_length or 0
            if not 0 < n_text < q.shape[1]:
                raise ValueError(
                    "a single-stream block needs the packed text length (JointRegions.text_length)"
                )
        if image_rotary_emb is not None:
            q = _rope(q, image_rotary_emb)
            k = _rope(k, image_rotary_emb)
        out_t, out_i = self.attend(
            q[:, :n_text], k[:, :n_text], v[:, :n_text], q[:, n_text:], k[:, n_text:], v[:, n_text:]
        )
        out_t, out_i = out_t.flatten(2, 3).to(q.dtype), out_i.flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return _cat(out_t, out_i)
        image = attn.to_out[1](attn.to_out[0](out_i.contiguous()))
        return image, attn.to_add_out(out_t.contiguous())


class SD3RegionalAttnProcessor(_JointAttention):
    """Regional joint attention for SD3 / SD3.5 joint blocks (sequence order ``[image | text]``).

    Mirrors the stock ``JointAttnProcessor2_0`` (and its fused variant): optional QK norms (SD3.5),
    and no ``to_add_out`` in the ``context_pre_only`` last block. SD3.5's image-only ``attn2``
    layers are not joint and keep their stock processor.
    """

    def __init__(self, regions: JointRegions, *, regional_block: bool = True) -> None:
        super().__init__(regions, regional_block=regional_block, image_first=True)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is None:
            raise ValueError("SD3RegionalAttnProcessor is for joint blocks (text and image)")
        if attention_mask is not None:
            raise ValueError("regional joint attention does not take an attention_mask")
        q, k, v, eq, ek, ev = _projections(attn, hidden_states, encoder_hidden_states)
        assert eq is not None and ek is not None and ev is not None
        heads = (attn.heads, -1)
        q = _norm(attn.norm_q, q.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        k = _norm(attn.norm_k, k.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        eq = _norm(attn.norm_added_q, eq.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        ek = _norm(attn.norm_added_k, ek.unflatten(-1, heads).transpose(1, 2)).transpose(1, 2)
        out_t, out_i = self.attend(eq, ek, ev.unflatten(-1, heads), q, k, v.unflatten(-1, heads))
        out_t, out_i = out_t.flatten(2, 3).to(q.dtype), out_i.flatten(2, 3).to(q.dtype)
        if not attn.context_pre_only:
            out_t = attn.to_add_out(out_t)
        return attn.to_out[1](attn.to_out[0](out_i)), out_t


# ---------------------------------------------------------------------------------- installing


def joint_attention_names(model: Any) -> list[str]:
    """Keys of ``model.attn_processors`` whose layers are joint (text + image) attention.

    FLUX: every ``FluxAttention`` (double-stream layers have added projections, single-stream
    layers see the joint sequence as their input). SD3: attention with added key/value
    projections; SD3.5's image-only ``attn2`` is left out.
    """
    from diffusers.models.transformers.transformer_flux import FluxAttention

    modules = dict(model.named_modules())
    names = []
    for key in model.attn_processors:
        module = modules.get(key.removesuffix(".processor"))
        if module is None:
            raise TypeError(f"cannot find the attention module of processor {key!r}")
        joint = isinstance(module, FluxAttention) or getattr(module, "added_kv_proj_dim", None)
        if joint or is_flux2_single_stream(module):
            names.append(key)
    return names


#: The regional processor class of each joint layer (by name) of a transformer.
ProcessorClasses = Callable[[Any, list[str]], list[type["_JointAttention"]]]


def _processor_classes(
    transformer: Any, names: list[str], chosen: ProcessorClasses | None
) -> list[type[_JointAttention]]:
    """The regional processor class for each of ``names``: ``chosen``'s (FLUX.2's come from
    :func:`rpg.attention.joint_flux2.regional_flux2`), else FLUX.1's or SD3's."""
    if chosen is not None:
        return chosen(transformer, names)
    if is_flux2(transformer):
        raise TypeError(
            "regional_joint needs FLUX.2's processors for a Flux2Transformer2DModel; use "
            "rpg.attention.joint_flux2.regional_flux2, which also numbers the packed text ids"
        )
    cls = FluxRegionalAttnProcessor if _is_flux(transformer) else SD3RegionalAttnProcessor
    return [cls] * len(names)


def _is_flux(model: Any) -> bool:
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel

    return isinstance(model, FluxTransformer2DModel)


def _timestep(value: Any) -> float | None:
    """The call's timestep on the host (a device sync: eager fallback for ``regional_steps``)."""
    if isinstance(value, torch.Tensor) and value.numel() and value.device.type != "meta":
        return float(value.reshape(-1)[0])
    if isinstance(value, int | float):
        return float(value)
    return None


def _weights_device(model: Any) -> torch.device | None:
    for p in model.parameters():
        if p.device.type != "meta":
            return torch.device(p.device)
    return None


@contextmanager
def regional_joint(
    transformer: Any,
    regions: JointRegions,
    *,
    guidance_batch: int | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    processor_classes: ProcessorClasses | None = None,
) -> Iterator[list[_JointAttention]]:
    """Use regional joint-attention processors on every joint layer of ``transformer``.

    ``transformer`` is a ``FluxTransformer2DModel`` or an ``SD3Transformer2DModel``; a
    ``Flux2Transformer2DModel`` goes through :func:`rpg.attention.joint_flux2.regional_flux2`,
    which passes its ``processor_classes`` (one class per layer name) and text ids. The
    processors go in through ``set_attn_processor`` (keeping each replaced processor's attention
    backend) and the previous ones are restored on exit, also on error. A forward pre-hook on the
    transformer (removed on exit) tells the processors which rows of a call are negative and which
    step is running:

    * ``guidance_batch=n`` (SD3 classifier-free guidance over ``n`` images): a call whose batch
      is ``2n`` is ``[negative, positive]``; any other call (SD3.5 skip-layer guidance) is
      positive;
    * ``negative_prompt_embeds`` (FLUX true CFG, a separate forward per half): the call that
      receives this very tensor as ``encoder_hidden_states`` is the negative one.

    The regional flag of ``regional_steps`` follows :meth:`JointRegions.step_callback` when the
    pipeline call has it (``JointBackbone.render`` passes it); otherwise, eager only, the step
    counter advances whenever the timestep changes (a pipeline's timesteps decrease; an increase
    starts a new run), which reads the timestep on the host in each forward.

    ``transformer`` may be compiled (``torch.compile(transformer)`` is unwrapped to the module it
    compiles); the region index is built before the loop on the conditioning's device.
    """
    from rpg.attention.install import unwrap_compiled

    transformer = unwrap_compiled(transformer)
    names = joint_attention_names(transformer)
    if not names:
        raise ValueError(f"{type(transformer).__name__} has no joint attention layers")
    classes = _processor_classes(transformer, names, processor_classes)
    previous = dict(transformer.attn_processors)
    every = regions.options.regional_blocks
    installed: dict[str, Any] = {}
    processors: list[_JointAttention] = []
    for i, (name, cls) in enumerate(zip(names, classes, strict=True)):
        proc = cls(regions, regional_block=i % every == 0)  # type: ignore[call-arg]
        old = previous[name]
        proc._attention_backend = getattr(old, "_attention_backend", None)
        proc._parallel_config = getattr(old, "_parallel_config", None)
        installed[name] = proc
        processors.append(proc)
    state = regions.state

    stepped_by_timestep = regions.options.regional_steps < 1 and regions.steps is not None

    def before(module: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        del module
        context = kwargs.get("encoder_hidden_states")
        if context is None and len(args) > 1:
            context = args[1]
        if negative_prompt_embeds is not None and context is negative_prompt_embeds:
            # identity, not values: compiled code tells it from the inputs' aliasing, no sync
            state.rows = "negative"
        elif (
            guidance_batch is not None
            and isinstance(context, torch.Tensor)
            and context.shape[0] == 2 * guidance_batch
        ):
            state.rows = "negative+positive"
        else:
            state.rows = "positive"
        if stepped_by_timestep and not torch.compiler.is_compiling() and not state.driven:
            t = _timestep(kwargs.get("timestep"))
            if t is not None:
                if state.last_timestep is None or t > state.last_timestep:
                    state.step = 0
                elif t < state.last_timestep:
                    state.step += 1
                state.last_timestep = t
                regions._update_regional()

    state.reset()
    handle = None
    try:
        # where the conditioning was made; else where the weights are (not under offloading)
        regions.prepare(regions.device or _weights_device(transformer))
        transformer.set_attn_processor({k: installed.get(k, v) for k, v in previous.items()})
        handle = transformer.register_forward_pre_hook(before, with_kwargs=True)
        yield processors
    finally:
        if handle is not None:
            handle.remove()
        transformer.set_attn_processor(dict(previous))
        regions._indices.clear()
        regions._text_cells.clear()
