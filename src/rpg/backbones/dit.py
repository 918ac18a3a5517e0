"""The MM-DiT backbones' shared base: stock pipelines with regional joint attention.

The families are :mod:`rpg.backbones.flux` (FLUX.1), :mod:`rpg.backbones.sd3` (SD3 / SD3.5) and
:mod:`rpg.backbones.flux2` (FLUX.2 [klein]).

The pipelines (``FluxPipeline``, ``StableDiffusion3Pipeline``) take ``prompt_embeds`` of any
token length, and their transformers attend jointly over ``text ∪ image``; rpg packs
``[base | region 0 | …]`` along the token axis and installs the processors of
:mod:`rpg.attention.joint` for the call. Everything else — the flow-matching scheduler and the
dynamic shift it computes from the image size, FLUX's guidance embedding and true CFG, SD3's CFG
batch, latent packing, decoding — stays the pipeline's own.

**Packing and its cost.** Text tokens pass through every block's projections and MLPs, so the
packed length is what regional prompting costs here. Each prompt is encoded on its own:

* the base prompt — and the one prompt of a one-region plan without base — keeps the stock
  encoding and padding (FLUX: T5 padded to 512 tokens; SD3: CLIP-L/G padded to 77 plus T5 padded
  to 256), so a one-region plan renders exactly what the stock pipeline renders for that prompt;
* region prompts take their real token length: T5 (FLUX, SD3) without padding, CLIP (SD3) cut
  after its end token — CLIP is causal, so those tokens equal the stock encoding's; T5 is not, so
  a region's T5 tokens differ slightly from the same prompt padded to 512;
* with no base prompt and ``regional_steps < 1`` or ``regional_blocks > 1``, the user's whole
  prompt is packed once more with stock padding, as the text non-regional calls read.

The pooled embedding (CLIP) comes from the base prompt, else the user's whole prompt.

FLUX.2 [klein] (:mod:`rpg.backbones.flux2`) is a :class:`JointBackbone` too: no pooled embedding
(``has_pooled``), its own processors and text ids (``regional_context``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.joint import JointRegions, regional_joint
from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span
from rpg.backbones.base import Backbone, StockCall, pack_segments, pad_tokens
from rpg.backbones.loading import ModelInfo, load_pipeline
from rpg.backbones.options import BackboneOptions, JointOptions
from rpg.errors import ConfigurationError
from rpg.models import whole_image_text

if TYPE_CHECKING:
    from rpg.models import RegionPlan

__all__ = ["JointBackbone"]

#: The only scheduler name the DiT backbones take: the pipeline's own flow-matching scheduler.
DIT_SCHEDULER = "default"


class JointBackbone(Backbone):
    """What FLUX and SD3 share: packing, scheduler rule, regional joint attention per call."""

    #: Transformer class of the pipeline (for single-file transformer checkpoints).
    transformer_class_name: ClassVar[str]
    #: The stock pipeline's T5 padding length.
    stock_t5_length: ClassVar[int]
    #: Whether the pipeline takes a pooled text embedding (FLUX.2 has none).
    has_pooled: ClassVar[bool] = True
    default_scheduler: ClassVar[str] = DIT_SCHEDULER
    options_model: ClassVar[type[BackboneOptions]] = JointOptions

    def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None:
        super().__init__(pipe, info=info)
        self.cache_kv = False  # text tokens change in every block: nothing to cache

    @classmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        """A folder or hub id as usual; a single file is a *transformer* checkpoint (how FLUX and
        SD3 fine-tunes ship), put into the pipeline that ``config`` names."""
        if info.kind != "file":
            return load_pipeline(cls.pipeline_class(), info, dtype=dtype, **options)
        from rpg.backbones.dit_single_file import load_single_file_pipeline

        return load_single_file_pipeline(cls, info, dtype=dtype, **options)

    # ----------------------------------------------------------------- facts about the model

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.pipe.transformer.dtype
        return dtype

    @property
    def latent_factor(self) -> int:
        """Pixels per image token: the VAE's factor times the 2×2 patch."""
        return int(self.pipe.vae_scale_factor) * 2

    @property
    def native_size(self) -> tuple[int, int]:
        """The pipeline's default size: ``default_sample_size`` latents (FLUX: 1024×1024; SD3
        reads it from the transformer config); 64×64 for the tiny models."""
        if self.info is not None and self.info.is_tiny:
            return 64, 64
        side = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def attention_models(self) -> list[Any]:
        return [self.pipe.transformer]

    def scheduler_named(self, name: str) -> Any:
        """Only ``"default"``: the pipeline's own flow-matching scheduler (and its shift)."""
        if name.strip().lower() != DIT_SCHEDULER:
            own = type(self.pipe.scheduler).__name__
            raise ConfigurationError(
                f"scheduler {name!r} does not apply to {self.name}: it denoises with its own "
                f"flow-matching scheduler ({own}); leave --scheduler out or pass 'default'"
            )
        return self.pipe.scheduler

    def request_scheduler(self) -> str:
        return DIT_SCHEDULER

    def layout(self, plan: RegionPlan, width: int, height: int) -> RegionalLayout:
        factor = self.latent_factor
        if width % factor or height % factor:
            raise ConfigurationError(
                f"{self.name} renders sizes that are multiples of {factor}, got {width}x{height} "
                f"(try {width // factor * factor or factor}x{height // factor * factor or factor})"
            )
        return super().layout(plan, width, height)

    # ----------------------------------------------------------------- encoding

    def encode_stock(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``([1, T, D], [1, P])``: the stock pipeline's own encoding of ``text`` (no pooled
        part when the model has none)."""
        raise NotImplementedError

    def encode_pooled(self, text: str) -> torch.Tensor | None:
        """``[1, P]``: the pooled embedding of ``text`` alone (CLIP only, no T5 pass)."""
        return self.encode_stock(text)[1]

    def encode(
        self,
        plan: RegionPlan,
        negative_prompt: str = "",
        *,
        guidance: bool = True,
        prompt: str | None = None,
        options: Any = None,
    ) -> RegionalConditioning:
        """Pack ``[base | regions]`` (see the module docstring) and the stock negative.

        Every text goes through each text encoder once per call: the stock encodings are
        remembered for the call, so the base prompt gives both its tokens and the pooled
        embedding, and the whole prompt (packed as ``global_span`` when ``options`` make some
        calls non-regional and there is no base prompt) is encoded once for both uses.
        Per-region negative prompts are not supported by MM-DiT CFG here: the negative half is
        the stock forward of one negative prompt.
        """
        if any(r.negative_prompt is not None for r in plan.regions):
            raise ConfigurationError(
                f"{self.name} takes one negative prompt for the whole image; remove the regions' "
                "own negative prompts"
            )
        joint = self.parse_options(options)
        stock: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

        def stock_encoding(text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            if text not in stock:
                stock[text] = self.encode_stock(text)
            return stock[text]

        stock_texts = set()
        if plan.base_prompt is not None:
            stock_texts.add(plan.base_prompt)
        elif len(plan.regions) == 1:
            stock_texts.add(plan.regions[0].prompt)
        has_base = plan.base_prompt is not None
        whole = whole_image_text(plan, prompt)
        # the whole prompt: for non-regional calls, and a canvas's background
        global_wanted = not has_base and (joint.needs_whole_prompt or plan.has_background)
        texts = ([plan.base_prompt] if plan.base_prompt is not None else []) + plan.prompts

        def encode(unique: list[str]) -> list[torch.Tensor]:
            real = self.encode_texts([t for t in unique if t not in stock_texts])
            return [stock_encoding(t)[0] if t in stock_texts else real.pop(0) for t in unique]

        embeds, spans = pack_segments(texts, encode)
        global_span: Span | None = None
        if global_wanted:
            tokens = stock_encoding(whole)[0]
            global_span = (int(embeds.shape[1]), int(embeds.shape[1] + tokens.shape[1]))
            embeds = torch.cat([embeds, tokens.to(embeds)], dim=1)
        pooled = None
        if self.has_pooled:
            pooled = stock[whole][1] if whole in stock else self.encode_pooled(whole)
        negative = negative_pooled = None
        negative_span: Span | None = None
        if guidance:
            negative, negative_pooled = stock_encoding(negative_prompt)
            negative_span = (0, int(negative.shape[1]))
            length = max(embeds.shape[1], negative.shape[1])
            embeds, negative = pad_tokens(embeds, length), pad_tokens(negative, length)
        return RegionalConditioning(
            prompt_embeds=embeds,
            region_spans=tuple(spans[1:] if has_base else spans),
            base_span=spans[0] if has_base else None,
            negative_prompt_embeds=negative,
            negative_span=negative_span,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            global_span=global_span,
        )

    # ----------------------------------------------------------------- rendering

    def pipeline_inputs(
        self, conditioning: RegionalConditioning, *, guidance: bool = True, num_images: int = 1
    ) -> dict[str, Any]:
        """The embeddings repeated per image (the DiT pipelines do not repeat embeddings they
        are given), and one image per prompt."""
        inputs = super().pipeline_inputs(conditioning, guidance=guidance, num_images=num_images)
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                inputs[key] = value.repeat_interleave(num_images, dim=0)
        inputs["num_images_per_prompt"] = 1
        return inputs

    def attention_context(
        self,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        guidance: bool,
        cache_kv: bool,
        pipeline_kwargs: Mapping[str, Any],
        call: StockCall | None = None,
    ) -> AbstractContextManager[object]:
        """:func:`~rpg.attention.joint.regional_joint` for one call, with the family's options
        (image-attention scope, ``regional_steps``, ``regional_blocks``).

        img2img runs only the last steps of the schedule; ``regional_steps`` is a fraction of
        the steps the call runs, counted as the stock img2img pipelines count them."""
        del cache_kv
        options = call.options if call is not None else self.parse_options(None)
        steps = call.steps if call is not None else None
        strength = pipeline_kwargs.get("strength")
        if steps is not None and self.img2img and strength is not None:
            # FluxImg2ImgPipeline / StableDiffusion3Img2ImgPipeline.get_timesteps
            steps -= int(max(steps - min(steps * float(strength), steps), 0))
        regions = JointRegions.from_conditioning(
            conditioning,
            layout,
            options=options.attention(),
            steps=steps,
            global_span=conditioning.global_span,
        )
        negative = call.inputs.get("negative_prompt_embeds") if call is not None else None
        num_images = call.num_images if call is not None else 1
        if call is not None:
            # regional_steps: the step comes from the pipeline's loop, not from a tensor read.
            call.step_callbacks.append(regions.step_callback)
        return self.regional_context(
            regions, guidance=guidance, negative=negative, num_images=num_images
        )

    def regional_context(
        self,
        regions: JointRegions,
        *,
        guidance: bool,
        negative: torch.Tensor | None,
        num_images: int,
    ) -> AbstractContextManager[object]:
        """The regional joint processors for one pipeline call."""
        return regional_joint(
            self.pipe.transformer, regions, **self.hook_inputs(guidance, negative, num_images)
        )

    def hook_inputs(
        self, guidance: bool, negative: torch.Tensor | None, num_images: int
    ) -> dict[str, Any]:
        """How ``regional_joint`` tells negative rows from positive ones for this pipeline."""
        raise NotImplementedError
