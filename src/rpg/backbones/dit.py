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
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.joint import JointAttentionOptions, JointRegions, regional_joint
from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span
from rpg.backbones.base import Backbone, PreparedInputs, Rendered, pad_tokens, timed_call
from rpg.backbones.loading import ModelInfo, load_pipeline
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.models import GenerationRequest, RegionPlan

__all__ = ["FluxBackbone", "JointBackbone", "SD3Backbone"]

#: The only scheduler name the DiT backbones take: the pipeline's own flow-matching scheduler.
DIT_SCHEDULER = "default"


def global_text(plan: RegionPlan, prompt: str | None) -> str:
    """The text that conditions the whole image: base prompt, else whole prompt, else regions."""
    if plan.base_prompt is not None:
        return plan.base_prompt
    if prompt is not None and prompt.strip():
        return prompt
    return ", ".join(dict.fromkeys(plan.prompts))


class JointBackbone(Backbone):
    """What FLUX and SD3 share: packing, scheduler rule, regional joint attention per call."""

    #: Transformer class of the pipeline (for single-file transformer checkpoints).
    transformer_class_name: ClassVar[str]
    #: The stock pipeline's T5 padding length.
    stock_t5_length: ClassVar[int]
    #: Whether the pipeline takes a pooled text embedding (FLUX.2 has none).
    has_pooled: ClassVar[bool] = True
    default_scheduler: ClassVar[str] = DIT_SCHEDULER

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

    def set_scheduler(self, name: str = DIT_SCHEDULER) -> None:
        """Only ``"default"``: the pipeline's own flow-matching scheduler (and its shift)."""
        if name.strip().lower() != DIT_SCHEDULER:
            own = type(self.pipe.scheduler).__name__
            raise ConfigurationError(
                f"scheduler {name!r} does not apply to {self.name}: it denoises with its own "
                f"flow-matching scheduler ({own}); leave --scheduler out or pass 'default'"
            )

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

    def encode(
        self,
        plan: RegionPlan,
        negative_prompt: str = "",
        *,
        guidance: bool = True,
        prompt: str | None = None,
    ) -> RegionalConditioning:
        """Pack ``[base | regions]`` (see the module docstring) and the stock negative.

        Per-region negative prompts are not supported by MM-DiT CFG here: the negative half is
        the stock forward of one negative prompt.
        """
        if any(r.negative_prompt is not None for r in plan.regions):
            raise ConfigurationError(
                f"{self.name} takes one negative prompt for the whole image; remove the regions' "
                "own negative prompts"
            )
        stock_texts = set()
        if plan.base_prompt is not None:
            stock_texts.add(plan.base_prompt)
        elif len(plan.regions) == 1:
            stock_texts.add(plan.regions[0].prompt)
        texts = ([plan.base_prompt] if plan.base_prompt is not None else []) + plan.prompts

        def encode(unique: list[str]) -> list[torch.Tensor]:
            real = self.encode_texts([t for t in unique if t not in stock_texts])
            out = []
            for t in unique:
                out.append(self.encode_stock(t)[0] if t in stock_texts else real.pop(0))
            return out

        from rpg.backbones.base import pack_segments

        embeds, spans = pack_segments(texts, encode)
        has_base = plan.base_prompt is not None
        pooled = self.encode_stock(global_text(plan, prompt))[1] if self.has_pooled else None
        negative = negative_pooled = None
        negative_span: Span | None = None
        if guidance:
            negative, negative_pooled = self.encode_stock(negative_prompt)
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
            extra={"global_text": global_text(plan, prompt)},
        )

    def with_global_span(
        self, conditioning: RegionalConditioning, options: JointAttentionOptions
    ) -> tuple[RegionalConditioning, Span | None]:
        """Append the whole prompt (stock padding) when non-regional calls need it."""
        needs = options.regional_steps < 1 or options.regional_blocks > 1
        if conditioning.base_span is not None or not needs:
            return conditioning, conditioning.base_span
        text = str(conditioning.extra.get("global_text", ""))
        whole, _ = self.encode_stock(text)
        embeds = conditioning.prompt_embeds
        span = (int(embeds.shape[1]), int(embeds.shape[1] + whole.shape[1]))
        embeds = torch.cat([embeds, whole.to(embeds)], dim=1)
        negative = conditioning.negative_prompt_embeds
        if negative is not None:
            length = max(embeds.shape[1], negative.shape[1])
            embeds, negative = pad_tokens(embeds, length), pad_tokens(negative, length)
        return replace(conditioning, prompt_embeds=embeds, negative_prompt_embeds=negative), span

    # ----------------------------------------------------------------- rendering

    def prepare_inputs(
        self,
        request: GenerationRequest,
        pipeline_kwargs: Mapping[str, Any],
        *,
        width: int,
        height: int,
    ) -> PreparedInputs:
        """Refuse ControlNet inputs (base rule) and pass the request's joint-attention options."""
        prepared = super().prepare_inputs(request, pipeline_kwargs, width=width, height=height)
        prepared.pipeline_kwargs["joint_options"] = JointAttentionOptions(
            image_attention=request.image_attention,
            regional_steps=request.regional_steps,
            regional_blocks=request.regional_blocks,
        )
        return prepared

    def check_joint_options(self, request: GenerationRequest) -> None:
        """Every joint option applies here; ``true_cfg_scale`` only to FLUX."""
        if request.true_cfg_scale != 1 and not isinstance(self, FluxBackbone):
            raise ConfigurationError(
                f"true_cfg_scale is FLUX's; {self.name} uses guidance_scale for "
                "classifier-free guidance"
            )

    def attention_context(
        self,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        guidance: bool,
        cache_kv: bool,
        pipeline_kwargs: Mapping[str, Any],
    ) -> AbstractContextManager[object]:
        raise NotImplementedError("JointBackbone.render installs regional_joint itself")

    def negative_inputs(self, guidance: bool, pipeline_kwargs: Mapping[str, Any]) -> bool:
        """Whether the pipeline call gets the negative embeddings."""
        return guidance

    def render(
        self,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images: int = 1,
        output_type: str = "pil",
        joint_options: JointAttentionOptions | None = None,
        **pipeline_kwargs: Any,
    ) -> Rendered:
        """Run the stock pipeline under :func:`~rpg.attention.joint.regional_joint`.

        ``joint_options`` choose the image-attention scope, ``regional_steps`` and
        ``regional_blocks``; the rest goes to the pipeline (``true_cfg_scale`` for FLUX,
        ``callback_on_step_end``...). Embeddings are repeated per image here, as the pipelines
        do not repeat embeddings they are given.
        """
        from rpg.backbones.base import OUTPUT_TYPES

        if output_type not in OUTPUT_TYPES:
            raise ConfigurationError(
                f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}"
            )
        pipeline_kwargs = self.call_inputs(
            pipeline_kwargs, width=layout.width, height=layout.height
        )
        options = joint_options or JointAttentionOptions()
        conditioning, global_span = self.with_global_span(conditioning, options)
        guidance = self.negative_inputs(self.uses_guidance(guidance_scale), pipeline_kwargs)
        if guidance and conditioning.negative_prompt_embeds is None:
            raise ConfigurationError(
                "guidance needs negative embeddings; encode with guidance=True"
            )

        inputs = self.embedding_inputs(conditioning, guidance=guidance, num_images=num_images)
        regions = JointRegions.from_conditioning(
            conditioning, layout, options=options, steps=steps, global_span=global_span
        )
        negative = inputs.get("negative_prompt_embeds")
        # regional_steps: the step comes from the pipeline's loop, not from reading a tensor.
        callback = regions.step_callback(pipeline_kwargs.get("callback_on_step_end"))
        if callback is not None:
            pipeline_kwargs["callback_on_step_end"] = callback
        with self.regional_context(
            regions, guidance=guidance, negative=negative, num_images=num_images
        ):
            output, denoise_seconds, decode_seconds = timed_call(
                self.pipe,
                **inputs,
                height=layout.height,
                width=layout.width,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                num_images_per_prompt=1,
                generator=generator,
                output_type=output_type,
                **pipeline_kwargs,
            )
        return Rendered(
            images=list(output.images),
            nsfw_content_detected=None,
            denoise_seconds=denoise_seconds,
            decode_seconds=decode_seconds,
        )

    def embedding_inputs(
        self, conditioning: RegionalConditioning, *, guidance: bool, num_images: int
    ) -> dict[str, Any]:
        """The embeddings as the stock pipeline's keyword arguments, repeated per image."""

        def per_image(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(num_images, dim=0)

        inputs: dict[str, Any] = {"prompt_embeds": per_image(conditioning.prompt_embeds)}
        if conditioning.pooled_prompt_embeds is not None:
            inputs["pooled_prompt_embeds"] = per_image(conditioning.pooled_prompt_embeds)
        if guidance:
            assert conditioning.negative_prompt_embeds is not None  # checked by render
            inputs["negative_prompt_embeds"] = per_image(conditioning.negative_prompt_embeds)
            if conditioning.negative_pooled_prompt_embeds is not None:
                inputs["negative_pooled_prompt_embeds"] = per_image(
                    conditioning.negative_pooled_prompt_embeds
                )
        return inputs

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
        return request.true_cfg_scale > 1

    def negative_inputs(self, guidance: bool, pipeline_kwargs: Mapping[str, Any]) -> bool:
        return float(pipeline_kwargs.get("true_cfg_scale", 1.0)) > 1

    def prepare_inputs(
        self,
        request: GenerationRequest,
        pipeline_kwargs: Mapping[str, Any],
        *,
        width: int,
        height: int,
    ) -> PreparedInputs:
        prepared = super().prepare_inputs(request, pipeline_kwargs, width=width, height=height)
        if request.true_cfg_scale > 1:
            prepared.pipeline_kwargs["true_cfg_scale"] = request.true_cfg_scale
        return prepared

    def encode_stock(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=text, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.stock_t5_length,
            )  # fmt: skip
        return embeds, pooled

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
