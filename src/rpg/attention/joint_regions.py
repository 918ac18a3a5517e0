"""The state that one model's regional joint-attention processors share.

See :mod:`rpg.attention.joint` for the semantics.

:class:`JointRegions` holds what every processor of a transformer reads: the text spans, the
layout, the options (:class:`JointAttentionOptions`), the region index of each patch grid (built
before the loop by :meth:`JointRegions.prepare`) and the run state the transformer's forward
pre-hook and the pipeline's step-end callback write (which rows of a call are negative, whether
the step is regional). Nothing here runs attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rpg.attention.regional_steps import ChainedStepCallback, regional_step_count
from rpg.attention.regions import RegionIndex, region_index
from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span

__all__ = ["ImageAttention", "JointAttentionOptions", "JointRegions", "Rows"]

ImageAttention = Literal["global", "region"]
#: How a call's batch is split: all positive rows, all negative rows, or ``[negative, positive]``.
Rows = Literal["positive", "negative", "negative+positive"]
#: Devices whose fused attention kernels return the log-sum-exp (``meta``: FLOP counting).


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
        return regional_step_count(self.regional_steps, steps)


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


class _StepCallback(ChainedStepCallback):
    """A ``callback_on_step_end`` that tells :class:`JointRegions` the next step, then chains."""

    def __init__(self, regions: JointRegions, callback: Any) -> None:
        super().__init__(callback)
        self.regions = regions
        regions.state.driven = True  # from the first step on: no timestep is read

    def on_step_end(self, pipe: Any, step: int) -> None:
        self.regions.set_step(step + 1)


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
    #: Per region, the ``(adapter, scale)`` pairs acting on its text rows only (``None``: no
    #: region has its own LoRA); see :mod:`rpg.attention.joint_lora`.
    region_loras: tuple[tuple[tuple[str, float], ...], ...] | None = None
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
        if self.region_loras is not None and len(self.region_loras) != len(self.region_spans):
            raise ValueError("region_loras must have one entry per region")
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
            region_loras=conditioning.region_loras,
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
