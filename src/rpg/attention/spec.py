"""What the regional attention processor needs to know, independent of any model.

:class:`RegionalConditioning` says where every prompt's tokens sit in the packed embeddings the
pipeline receives; :class:`RegionalLayout` says where every region sits on the canvas. A backbone
builds the first by encoding prompts, :meth:`RegionalLayout.from_plan` builds the second, and the
processor combines them at every latent resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rpg.layout import check_cell_sizes

if TYPE_CHECKING:
    from rpg.models import RegionPlan

Span = tuple[int, int]
"""A half-open token range ``[start, end)`` along the sequence axis of packed embeddings."""


@dataclass(frozen=True)
class RegionalConditioning:
    """Packed prompt embeddings ``[base | region 0 | region 1 | ...]`` and their token spans.

    ``negative_prompt_embeds`` has the same token length as ``prompt_embeds`` because diffusers
    concatenates the two along the batch axis for classifier-free guidance. When every region
    shares one negative prompt, ``negative_region_spans`` is ``None`` and the unconditional half
    attends to ``negative_span`` only (plain attention, as in the stock pipeline); the rest of
    the negative tensor is padding that no query reads.

    The model must receive these embeddings as the pipelines pass them: each half of the batch
    is these rows, repeated for every image (see :attr:`shared_rows`).
    """

    prompt_embeds: torch.Tensor
    region_spans: tuple[Span, ...]
    base_span: Span | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_span: Span | None = None
    negative_region_spans: tuple[Span, ...] | None = None
    negative_base_span: Span | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    #: MM-DiT without a base prompt: the whole prompt packed (stock padding) after the regions,
    #: read by the calls and blocks that are not regional (``regional_steps``/``_blocks``).
    global_span: Span | None = None
    #: Per region, ``(adapter name, scale)`` pairs of LoRAs that act on that region's text only
    #: (UNet: the keys and values its tokens give in cross-attention; MM-DiT: its text rows; see
    #: :mod:`rpg.lora`). ``None``: no region has its own LoRA.
    region_loras: tuple[tuple[tuple[str, float], ...], ...] | None = None

    def __post_init__(self) -> None:
        total = self.prompt_embeds.shape[1]
        if self.region_loras is not None and len(self.region_loras) != len(self.region_spans):
            raise ValueError("region_loras must have one entry per region")
        extra = [s for s in (self.base_span, self.global_span) if s is not None]
        for span in (*self.region_spans, *extra):
            if not 0 <= span[0] < span[1] <= total:
                raise ValueError(f"token span {span} is outside the {total} packed tokens")
        neg = self.negative_prompt_embeds
        if neg is not None and neg.shape[1] != total:
            raise ValueError(
                f"negative embeddings have {neg.shape[1]} tokens but prompt embeddings have "
                f"{total}; pack them to the same length"
            )
        if self.negative_region_spans is not None and len(self.negative_region_spans) != len(
            self.region_spans
        ):
            raise ValueError("negative_region_spans must have one span per region")

    @property
    def num_regions(self) -> int:
        return len(self.region_spans)

    @property
    def shared_rows(self) -> bool:
        """Whether every context row of a batch half is a copy of one encoding.

        True when the embeddings hold one row each: diffusers pipelines repeat it for every
        image of the call, so the processor projects one row per half and expands it, and
        never has to compare rows on the device. Embeddings with several rows (one per image)
        are projected row by row.
        """
        neg = self.negative_prompt_embeds
        return self.prompt_embeds.shape[0] == 1 and (neg is None or neg.shape[0] == 1)


@dataclass(frozen=True)
class RegionalLayout:
    """Where the regions are: split rows, the effective base weight per region, the image size.

    A canvas plan's layout has no rows; ``canvas`` holds the plan, whose
    :meth:`~rpg.models.RegionPlan.layer_weights` say what each layer (a "region" here, bottom
    to top) and the background paint at every grid.
    """

    rows: tuple[tuple[float, tuple[float, ...]], ...]
    base_weights: tuple[float, ...]
    height: int
    width: int
    latent_factor: int = 8
    canvas: RegionPlan | None = None

    def __post_init__(self) -> None:
        if self.canvas is not None:
            n = len(self.canvas.layers)
            if self.rows or not n:
                raise ValueError("a canvas layout takes a canvas plan (layers) and no rows")
        else:
            n = sum(len(w) for _, w in self.rows)
        if n != len(self.base_weights):
            raise ValueError(f"layout has {n} regions but {len(self.base_weights)} base weights")
        if self.height % self.latent_factor or self.width % self.latent_factor:
            raise ValueError(
                f"image size {self.width}x{self.height} must be a multiple of {self.latent_factor}"
            )

    @property
    def num_regions(self) -> int:
        return len(self.base_weights)

    @property
    def has_background(self) -> bool:
        """Whether some part of the canvas may be painted by the background (a canvas whose
        layers do not tile it as rows and columns); its text is then needed."""
        return self.canvas is not None and self.canvas.has_background

    @classmethod
    def from_plan(
        cls, plan: RegionPlan, height: int, width: int, *, latent_factor: int = 8
    ) -> RegionalLayout:
        """The layout of ``plan`` on a ``width × height`` image.

        A plan with a region smaller than one latent cell at this size is refused here, where
        the plan meets the size (:func:`rpg.layout.check_cell_sizes`): its prompt would act
        nowhere at full resolution. A canvas layer that paints nothing at this size is a
        :class:`~rpg.models.LayerWarning`. Building a layout directly does not check, so coarse
        test grids stay possible.
        """
        if plan.is_canvas:
            plan.warn_unpainted(height, width, factor=latent_factor)
            return cls(
                rows=(),
                base_weights=tuple(plan.base_weights()),
                height=height,
                width=width,
                latent_factor=latent_factor,
                canvas=plan,
            )
        check_cell_sizes(plan.split_rows(), height, width, factor=latent_factor)
        return cls(
            rows=tuple((h, tuple(ws)) for h, ws in plan.split_rows()),
            base_weights=tuple(plan.base_weights()),
            height=height,
            width=width,
            latent_factor=latent_factor,
        )


@dataclass(frozen=True)
class PainterSpans:
    """The token span every painter of a layout reads, per batch half, checked once.

    What a cross-attention processor takes from a conditioning and a layout: ``region_spans``
    for the positive half, ``negative_span`` (one shared negative prompt) or
    ``negative_region_spans`` (per-region negatives) for the negative half, and the base spans
    of both halves (``negative_base_span`` falls back to ``negative_span``). On a canvas the
    background is one more painter, the last, reading the base prompt, else the whole prompt
    packed for it (``(0, 0)`` when the canvas leaves no background to paint).
    """

    region_spans: tuple[Span, ...]
    base_span: Span | None
    negative_span: Span | None
    negative_region_spans: tuple[Span, ...] | None
    negative_base_span: Span | None

    @classmethod
    def resolve(
        cls, conditioning: RegionalConditioning, layout: RegionalLayout, *, guidance: bool
    ) -> PainterSpans:
        """The spans of ``conditioning`` for ``layout``; a :class:`ValueError` saying what is
        missing when the layout needs text the conditioning does not have."""
        if conditioning.num_regions != layout.num_regions:
            raise ValueError(
                f"conditioning has {conditioning.num_regions} region spans but the layout has "
                f"{layout.num_regions} regions"
            )
        region_spans: tuple[Span, ...] = tuple(conditioning.region_spans)
        base_span = conditioning.base_span
        negative_region_spans = conditioning.negative_region_spans
        negative_base_span = conditioning.negative_base_span or conditioning.negative_span
        if layout.canvas is not None:
            # The background paints with the base prompt, else the whole prompt packed for it;
            # it is the last painter of a canvas index.
            background = conditioning.base_span or conditioning.global_span
            if background is None and layout.has_background:
                raise ValueError(
                    "the canvas leaves background to paint but the conditioning has no text for "
                    "it: a base_span, or a global_span holding the whole prompt"
                )
            region_spans += (background or (0, 0),)
            if negative_region_spans is not None:
                neg_background = negative_base_span
                if neg_background is None and layout.has_background:
                    raise ValueError(
                        "per-layer negatives on a canvas with background need negative_base_span "
                        "(the request's negative prompt) for the background's negative half"
                    )
                negative_region_spans += (neg_background or (0, 0),)
        uses_base = any(b > 0 for b in layout.base_weights)
        if uses_base and base_span is None:
            raise ValueError(
                "the layout blends a base prompt (base weight > 0) but the "
                "conditioning has no base_span"
            )
        if (
            uses_base
            and guidance
            and negative_region_spans is not None
            and negative_base_span is None
        ):
            raise ValueError(
                "per-region negatives with a base prompt need negative_base_span "
                "or negative_span for the negative half's base term"
            )
        return cls(
            region_spans=region_spans,
            base_span=base_span,
            negative_span=conditioning.negative_span,
            negative_region_spans=negative_region_spans,
            negative_base_span=negative_base_span,
        )
