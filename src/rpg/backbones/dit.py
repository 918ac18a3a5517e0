"""FLUX.1 and SD3 / SD3.5: the stock MM-DiT pipelines with regional joint attention.

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
from rpg.backbones.options import BackboneOptions, FluxOptions, JointOptions
from rpg.errors import ConfigurationError
from rpg.models import whole_image_text

if TYPE_CHECKING:
    from rpg.models import GenerationRequest, RegionPlan

__all__ = ["FluxBackbone", "JointBackbone", "SD3Backbone"]

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
        (image-attention scope, ``regional_steps``, ``regional_blocks``)."""
        del cache_kv, pipeline_kwargs
        options = call.options if call is not None else self.parse_options(None)
        steps = call.steps if call is not None else None
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


class FluxBackbone(JointBackbone):
    """FLUX.1 [dev] / [schnell] and fine-tunes (``FluxPipeline``).

    ``guidance_scale`` is the pipeline's own: the distilled guidance embedding of FLUX.1-dev
    (ignored by [schnell]). True classifier-free guidance with the negative prompt is the
    pipeline's ``true_cfg_scale`` (request field ``true_cfg_scale`` > 1): a second forward per
    step over the negative prompt, plain stock attention.
    """

    name: ClassVar[str] = "flux"
    description: ClassVar[str] = "FLUX.1 (FluxPipeline) with regional joint attention"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    checkpoint_types: ClassVar[tuple[str, ...]] = ("flux-dev", "flux-schnell")
    transformer_class_name: ClassVar[str] = "FluxTransformer2DModel"
    stock_t5_length: ClassVar[int] = 512
    default_guidance: ClassVar[float] = 3.5
    options_model: ClassVar[type[BackboneOptions]] = FluxOptions
    inpaint_pipeline_name: ClassVar[str] = "FluxInpaintPipeline"

    def inpaint_pipeline_class(self) -> type | None:
        """``FluxFillPipeline`` for a fill transformer (it reads the masked image as extra
        input channels), else ``FluxInpaintPipeline``."""
        from rpg.backbones.inpaint import diffusers_class

        latent = int(self.pipe.vae.config.latent_channels) * 4
        if int(self.pipe.transformer.config.in_channels) > latent:
            return diffusers_class("FluxFillPipeline")
        return diffusers_class(self.inpaint_pipeline_name)

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    @property
    def native_size(self) -> tuple[int, int]:
        """1024×1024 (the pipeline's default); 64×64 for the tiny model."""
        if self.info is not None and self.info.is_tiny:
            return 64, 64
        side = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def uses_guidance(self, guidance_scale: float) -> bool:
        """FLUX's ``guidance_scale`` is an embedding, never a CFG batch."""
        del guidance_scale
        return False

    def request_guidance(self, request: GenerationRequest) -> bool:
        """The negative half is encoded only for true CFG (``true_cfg_scale`` > 1)."""
        options: FluxOptions = self.parse_options(request.options)
        return options.true_cfg_scale > 1

    def option_inputs(self, options: Any) -> dict[str, Any]:
        scale = float(options.true_cfg_scale)
        return {"true_cfg_scale": scale} if scale > 1 else {}

    def call_guidance(self, guidance_scale: float, pipeline_kwargs: Mapping[str, Any]) -> bool:
        """Negative embeddings go in only with true CFG; ``guidance_scale`` is an embedding."""
        del guidance_scale
        return float(pipeline_kwargs.get("true_cfg_scale", 1.0)) > 1

    def encode_stock(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=text, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.stock_t5_length,
            )  # fmt: skip
        return embeds, pooled

    def encode_pooled(self, text: str) -> torch.Tensor:
        """CLIP's pooled embedding of ``text`` as the stock ``encode_prompt`` makes it."""
        with torch.no_grad():
            pooled: torch.Tensor = self.pipe._get_clip_prompt_embeds(
                prompt=text, device=self.device, num_images_per_prompt=1
            )
        return pooled

    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text through T5 at its real length (end token included, no padding)."""
        tokenizer, encoder = self.pipe.tokenizer_2, self.pipe.text_encoder_2
        out = []
        for text in texts:
            ids = tokenizer(
                text, truncation=True, max_length=self.stock_t5_length, return_tensors="pt"
            ).input_ids
            with torch.no_grad():
                hidden = encoder(ids.to(self.device), output_hidden_states=False)[0]
            out.append(hidden.to(dtype=encoder.dtype, device=self.device))
        return out

    def hook_inputs(
        self, guidance: bool, negative: torch.Tensor | None, num_images: int
    ) -> dict[str, Any]:
        return {"negative_prompt_embeds": negative if guidance else None}


class SD3Backbone(JointBackbone):
    """SD3 / SD3.5 (``StableDiffusion3Pipeline``): CLIP-L, CLIP-G and T5, CFG batch.

    Classifier-free guidance with one negative prompt for the whole image: the negative half of
    the batch is the stock forward. SD3.5's image-only ``attn2`` layers stay stock. Skip-layer
    guidance (SD3.5 medium) works: its extra positive forward is regional too.
    """

    name: ClassVar[str] = "sd3"
    description: ClassVar[str] = (
        "SD3 / SD3.5 (StableDiffusion3Pipeline) with regional joint attention"
    )
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    checkpoint_types: ClassVar[tuple[str, ...]] = ("sd3", "sd35_large", "sd35_medium")
    transformer_class_name: ClassVar[str] = "SD3Transformer2DModel"
    inpaint_pipeline_name: ClassVar[str] = "StableDiffusion3InpaintPipeline"
    stock_t5_length: ClassVar[int] = 256

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    @property
    def native_size(self) -> tuple[int, int]:
        side = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > 1

    def encode_stock(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=text, prompt_2=None, prompt_3=None, device=self.device,
                num_images_per_prompt=1, do_classifier_free_guidance=False,
                max_sequence_length=self.stock_t5_length,
            )  # fmt: skip
        return embeds, pooled

    def encode_pooled(self, text: str) -> torch.Tensor:
        """CLIP-L ⊕ CLIP-G pooled embeddings of ``text``, as the stock ``encode_prompt``."""
        pooled = []
        with torch.no_grad():
            for index in (0, 1):
                _, part = self.pipe._get_clip_prompt_embeds(
                    prompt=text, device=self.device, num_images_per_prompt=1,
                    clip_model_index=index,
                )  # fmt: skip
                pooled.append(part)
        return torch.cat(pooled, dim=-1)

    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text as ``[CLIP-L ⊕ CLIP-G (cut after the end token) | T5 (real length)]``."""
        pipe = self.pipe
        width = int(pipe.transformer.config.joint_attention_dim)
        out = []
        for text in texts:
            parts = []
            for tokenizer, encoder in (
                (pipe.tokenizer, pipe.text_encoder),
                (pipe.tokenizer_2, pipe.text_encoder_2),
            ):
                ids = tokenizer(
                    text, padding="max_length", truncation=True,
                    max_length=pipe.tokenizer_max_length, return_tensors="pt",
                ).input_ids  # fmt: skip
                real = len(tokenizer(text, truncation=True, max_length=ids.shape[1]).input_ids)
                with torch.no_grad():
                    hidden = encoder(ids.to(self.device), output_hidden_states=True)
                # CLIP is causal: the first `real` positions do not see the padding after them.
                parts.append(hidden.hidden_states[-2][:, :real].to(encoder.dtype))
            clip = torch.cat(parts, dim=-1)
            clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
            segments = [clip]
            if pipe.text_encoder_3 is not None:
                ids = pipe.tokenizer_3(
                    text, truncation=True, max_length=self.stock_t5_length, return_tensors="pt"
                ).input_ids
                with torch.no_grad():
                    t5 = pipe.text_encoder_3(ids.to(self.device))[0]
                segments.append(t5.to(pipe.text_encoder_3.dtype))
            dtype = segments[-1].dtype
            out.append(torch.cat([s.to(dtype) for s in segments], dim=1).to(self.device))
        return out

    def hook_inputs(
        self, guidance: bool, negative: torch.Tensor | None, num_images: int
    ) -> dict[str, Any]:
        return {"guidance_batch": num_images if guidance else None}
