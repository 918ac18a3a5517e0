"""The backbone contract: load a stock diffusers pipeline, encode a plan, denoise regionally.

A backbone wraps one *stock* pipeline object and adds only what regional prompting needs:

* :meth:`Backbone.encode` turns a :class:`~rpg.models.RegionPlan` into packed embeddings
  ``[base | region 0 | region 1 | ...]`` and the token span of every prompt. The plan logic
  (which texts, shared or per-region negatives, de-duplication, padding the two halves to one
  length) and the span arithmetic live here, in one place; a subclass only says how one list of
  texts becomes embeddings (:meth:`Backbone.encode_texts`), so spans always come from the actual
  encodings.
* :meth:`Backbone.prepare_inputs` turns a request's extra inputs (ControlNet images and scales)
  into pipeline arguments and records them in the request: the orchestrator knows no backbone
  by type.
* :meth:`Backbone.render` calls the stock pipeline with ``prompt_embeds`` /
  ``negative_prompt_embeds`` (plus whatever :meth:`Backbone.pipeline_inputs` adds, such as SDXL's
  pooled embeddings) inside :meth:`Backbone.attention_context`, and lets the pipeline decode by
  its own rules (VAE upcast, latent mean/std, safety checker); a step-end callback splits the
  call into denoise and decode time.

SD 1.x/2.x (:mod:`rpg.backbones.sd`) is the reference implementation; SDXL, ControlNet and
inpainting backbones subclass the same base and override the few hooks that differ.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.spec import RegionalConditioning, RegionalLayout
from rpg.backbones.calls import (
    OUTPUT_TYPES,
    PreparedInputs,
    Rendered,
    StepClock,
    StockCall,
    timed_call,
)
from rpg.backbones.discovery import LOAD_OPTIONS, BackboneLoading
from rpg.backbones.loading import ModelInfo
from rpg.backbones.options import BackboneOptions, NoOptions, validate_options
from rpg.backbones.packing import pack_plan, pack_segments, pad_tokens, token_windows
from rpg.backbones.schedulers import DEFAULT_SCHEDULER, SchedulerChoice
from rpg.backbones.variants import PipelineVariants
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.models import GenerationRequest, RegionPlan

__all__ = [
    "LOAD_OPTIONS",
    "OUTPUT_TYPES",
    "Backbone",
    "PreparedInputs",
    "Rendered",
    "StepClock",
    "StockCall",
    "lora_call_scale",
    "pack_segments",
    "pad_tokens",
    "timed_call",
    "token_windows",
]


def lora_call_scale(pipeline_kwargs: Mapping[str, Any]) -> float | None:
    """The LoRA scale a call passes in ``cross_attention_kwargs`` (``None``: none given)."""
    extra = pipeline_kwargs.get("cross_attention_kwargs") or {}
    scale = extra.get("scale") if isinstance(extra, Mapping) else None
    return None if scale is None else float(scale)


class Backbone(BackboneLoading, PipelineVariants["Backbone"], SchedulerChoice):
    """A stock diffusers pipeline plus what regional prompting needs from it.

    Subclasses set the class attributes and implement :meth:`encode_texts`; the rest has working
    defaults for pipelines that take ``prompt_embeds`` / ``negative_prompt_embeds``,
    ``output_type`` and ``callback_on_step_end``, as the diffusers text-to-image pipelines do.
    Finding and loading models (:class:`~rpg.backbones.discovery.BackboneLoading`), the
    family's inpainting and img2img pipelines (:class:`~rpg.backbones.variants.PipelineVariants`)
    and schedulers (:class:`~rpg.backbones.schedulers.SchedulerChoice`) are mixed in.
    """

    #: Registry name (``rpg plugins`` lists it; ``RPG.from_pretrained(..., backbone=name)``).
    name: ClassVar[str]
    #: One line for ``rpg plugins``.
    description: ClassVar[str] = ""
    #: ``_class_name`` values of ``model_index.json`` this backbone loads.
    pipeline_class_names: ClassVar[tuple[str, ...]] = ()
    #: diffusers' single-file model types (``infer_diffusers_model_type``) this backbone loads.
    checkpoint_types: ClassVar[tuple[str, ...]] = ()
    #: The scheduler a request without one gets (see :mod:`rpg.backbones.schedulers`).
    default_scheduler: ClassVar[str] = DEFAULT_SCHEDULER
    #: The guidance scale a request without one gets (the stock pipeline's own default).
    default_guidance: ClassVar[float] = 7.0
    #: The options this family owns (``request.options``; see :mod:`rpg.backbones.options`).
    options_model: ClassVar[type[BackboneOptions]] = NoOptions
    #: The family's stock inpainting pipeline, by its name in diffusers (``""``: none), which
    #: ``rpg edit`` renders with (see :meth:`inpaint_backbone`).
    inpaint_pipeline_name: ClassVar[str] = ""
    #: The family's stock img2img pipeline, by its name in diffusers (``""``: none), which
    #: img2img and the hires fix render with (see :meth:`img2img_backbone`).
    img2img_pipeline_name: ClassVar[str] = ""

    def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None:
        self.pipe = pipe
        self.info = info
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler is None:
            raise ConfigurationError(f"{type(pipe).__name__} has no scheduler")
        #: The model's own scheduler config: every named scheduler is built from this one.
        self.scheduler_config: dict[str, Any] = dict(scheduler.config)
        #: The scheduler object the pipeline came with: what ``"default"`` means.
        self._own_scheduler = scheduler
        self._schedulers: dict[str, Any] = {}
        #: Whether this backbone drives the family's inpainting pipeline (``rpg edit``).
        self.inpainting = False
        #: Whether this backbone drives the family's img2img pipeline (init image, hires fix).
        self.img2img = False
        #: Whether a request without a scheduler keeps whatever scheduler the pipeline holds
        #: at call time (a pipeline given to ``RPG.from_pipeline``: it is the user's), rather
        #: than getting :attr:`default_scheduler`.
        self.keeps_pipeline_scheduler = False
        #: Project each layer's text context once per call and reuse it at every step
        #: (``regional(..., cache_kv=True)``): same pixels, less time, the keys' and values'
        #: memory for the call. Set ``False`` when memory is tighter than time.
        self.cache_kv: bool = True
        self._long_prompts_noted: set[str] = set()

    # ----------------------------------------------------------------- facts about the model

    @property
    def device(self) -> torch.device:
        """Where the denoiser runs (diffusers' execution device, offloading-aware)."""
        return torch.device(self.pipe._execution_device)

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.pipe.unet.dtype
        return dtype

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for every SD-family VAE)."""
        return int(self.pipe.vae_scale_factor)

    @property
    def native_size(self) -> tuple[int, int]:
        """``(width, height)`` the model was trained at, the default image size."""
        sample = self.pipe.unet.config.sample_size
        h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        return int(w) * self.latent_factor, int(h) * self.latent_factor

    def attention_models(self) -> list[Any]:
        """Models whose cross-attention gets the regional processor (UNet, ControlNets...)."""
        return [self.pipe.unet]

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Whether the pipeline will run classifier-free guidance (batch ``[uncond, cond]``).

        Mirrors the stock pipelines: guidance scale above 1, and no guidance-distilled UNet
        (``time_cond_proj_dim`` set, as in LCM models).
        """
        config = self.pipe.unet.config
        return guidance_scale > 1 and getattr(config, "time_cond_proj_dim", None) is None

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Encode each text into ``[1, T_i, D]`` embeddings (``T_i`` may span several windows)."""

    def pooled_embeds(
        self,
        plan: RegionPlan,
        negative_prompt: str,
        *,
        guidance: bool,
        prompt: str | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pooled text embeddings (positive, negative) for models that need them (SDXL).

        ``prompt`` is the user's whole prompt, for a global embedding when the plan has no base
        prompt.
        """
        del plan, negative_prompt, guidance, prompt
        return None, None

    def encode(
        self,
        plan: RegionPlan,
        negative_prompt: str = "",
        *,
        guidance: bool = True,
        prompt: str | None = None,
        options: Any = None,
    ) -> RegionalConditioning:
        """Encode ``plan`` into packed embeddings and spans, and the negative half if guided.

        Positive: ``[base | region 0 | region 1 | ...]`` (repeated prompts share a span).
        Negative, when ``guidance``: if no region has its own ``negative_prompt``, one
        ``negative_prompt`` encoding read by every unconditional query (plain attention, as in
        the stock pipeline); otherwise ``[negative base | region negatives...]`` packed like the
        positives, where a region without its own uses ``negative_prompt``. The shorter half is
        padded with copies of its own tokens so both have one length. ``prompt`` (the user's
        whole prompt) goes to :meth:`pooled_embeds`. ``options`` (the family's, see
        :meth:`parse_options`) may change what is packed: options that make some steps not
        regional (``needs_whole_prompt``) pack the whole prompt when there is no base prompt.
        The packing itself is :func:`~rpg.backbones.packing.pack_plan`.
        """
        packed = pack_plan(
            plan,
            negative_prompt,
            self.encode_texts,
            guidance=guidance,
            prompt=prompt,
            tokenizer=getattr(self.pipe, "tokenizer", None),
            noted=self._long_prompts_noted,
            whole_prompt=bool(getattr(options, "needs_whole_prompt", False)),
        )
        pooled, negative_pooled = self.pooled_embeds(
            plan, negative_prompt, guidance=guidance, prompt=prompt
        )
        return packed.conditioning(pooled, negative_pooled)

    # ----------------------------------------------------------------- rendering

    def layout(self, plan: RegionPlan, width: int, height: int) -> RegionalLayout:
        """Where the plan's regions fall on a ``width × height`` image at this model's latents."""
        return RegionalLayout.from_plan(plan, height, width, latent_factor=self.latent_factor)

    def pipeline_inputs(
        self, conditioning: RegionalConditioning, *, guidance: bool = True, num_images: int = 1
    ) -> dict[str, Any]:
        """The conditioning as stock-pipeline keyword arguments for a call of ``num_images``
        images (the negative half only when ``guidance``)."""
        inputs: dict[str, Any] = {"prompt_embeds": conditioning.prompt_embeds}
        if conditioning.negative_prompt_embeds is not None:
            inputs["negative_prompt_embeds"] = conditioning.negative_prompt_embeds
        if conditioning.pooled_prompt_embeds is not None:
            inputs["pooled_prompt_embeds"] = conditioning.pooled_prompt_embeds
        if conditioning.negative_pooled_prompt_embeds is not None:
            inputs["negative_pooled_prompt_embeds"] = conditioning.negative_pooled_prompt_embeds
        if not guidance:
            inputs = {k: v for k, v in inputs.items() if not k.startswith("negative_")}
        inputs["num_images_per_prompt"] = num_images
        return inputs

    def call_guidance(self, guidance_scale: float, pipeline_kwargs: Mapping[str, Any]) -> bool:
        """Whether the stock call with these arguments reads the negative embeddings."""
        del pipeline_kwargs
        return self.uses_guidance(guidance_scale)

    def prepare_inputs(
        self,
        request: GenerationRequest,
        pipeline_kwargs: Mapping[str, Any],
        *,
        width: int,
        height: int,
    ) -> PreparedInputs:
        """Resolve the extra pipeline inputs a request implies, and record them in the request.

        The hook for inputs beyond the prompt (ControlNet images and scales; guidance inputs of
        other pipelines): it returns the request with those inputs recorded, the keyword
        arguments to pass to :meth:`render`, and the images a saved PNG should embed. The base
        backbone takes no extra inputs, so a request with ``controls`` is an error here rather
        than a render that silently ignores them.
        """
        recorded = request.controls
        if recorded:
            wanted = ", ".join(repr(c.controlnet) for c in recorded)
            count = f"{len(recorded)} ControlNet input{'s' if len(recorded) != 1 else ''}"
            raise ConfigurationError(
                f"the request has {count} ({wanted}) but this RPG was loaded without "
                f"ControlNet, so the control would be ignored; load it with "
                f"RPG.from_pretrained(model, controlnet=[{wanted}]) (CLI: --controlnet MODEL), "
                "or remove the request's controls to render without control"
            )
        return PreparedInputs(request, dict(pipeline_kwargs))

    def parse_options(self, options: Mapping[str, Any] | BackboneOptions | None) -> Any:
        """``options`` (``request.options``) as this family's typed :attr:`options_model`.

        An option another family owns, a misspelt one or a value out of range is a
        :class:`~rpg.errors.ConfigurationError` naming it and listing what this family takes.
        """
        return validate_options(self.name, self.options_model, options)

    def option_inputs(self, options: Any) -> dict[str, Any]:
        """Stock-pipeline arguments the family's options imply (FLUX's ``true_cfg_scale``)."""
        del options
        return {}

    def request_guidance(self, request: GenerationRequest) -> bool:
        """Whether rendering ``request`` needs the negative half (``encode(guidance=...)``)."""
        return self.uses_guidance(self.guidance_for(request))

    def guidance_for(self, request: GenerationRequest) -> float:
        """The request's guidance scale, or this backbone's default when it names none."""
        scale = request.guidance_scale
        return self.default_guidance if scale is None else scale

    def call_inputs(
        self, pipeline_kwargs: Mapping[str, Any], *, width: int, height: int
    ) -> dict[str, Any]:
        """``pipeline_kwargs`` checked and shaped as this backbone's stock pipeline takes them.

        :meth:`render` calls it on every call, so inputs given to :meth:`render` directly are
        checked as well as those from :meth:`prepare_inputs`; the base passes them unchanged.
        """
        del width, height
        return dict(pipeline_kwargs)

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
        """The regional processors for one pipeline call (see :func:`rpg.attention.regional`).

        Every model of :meth:`attention_models` shares one processor; a backbone whose models
        see different batches in some modes (ControlNet's guess mode) overrides this, deciding
        from ``pipeline_kwargs`` alone, so a backbone holds no per-call state. ``call`` says
        what else the call is made of (steps, images, the family's options, the embeddings as
        passed): the UNet's isolation and regional steps come from its options, and the MM-DiT
        processors need the rest.
        """
        from rpg.attention.install import regional

        stack = ExitStack()
        try:
            processor = stack.enter_context(
                regional(
                    self.attention_models(),
                    conditioning,
                    layout,
                    guidance=guidance,
                    cache_kv=cache_kv,
                    lora_scale=lora_call_scale(pipeline_kwargs),
                    **(call.isolation() if call is not None else {}),
                )
            )
            if call is not None:
                call.switch_regional_steps([processor])
        except BaseException:
            stack.close()
            raise
        return stack

    def size_inputs(self, layout: RegionalLayout) -> dict[str, int]:
        """``height``/``width`` for the stock call; nothing for the SD and SDXL img2img
        pipelines, which take no size and render at the init image's (already the layout's)."""
        import inspect

        if "height" not in inspect.signature(self.pipe.__call__).parameters:
            return {}
        return {"height": layout.height, "width": layout.width}

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
        options: Any = None,
        **pipeline_kwargs: Any,
    ) -> Rendered:
        """Run the stock pipeline with regional attention, decoding by its own rules.

        The pipeline gets ``output_type`` (``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``) and
        decodes itself: VAE upcasting when ``force_upcast`` is set, ``latents_mean`` /
        ``latents_std``, shift factors, safety checker and watermark all stay the pipeline's.
        ``options`` are the family's typed options (:meth:`parse_options`; ``None``: defaults).
        ``pipeline_kwargs`` go to the call unchanged (``eta``, ``cross_attention_kwargs``, a
        ControlNet ``image``...). ``callback_on_step_end`` (a function or a diffusers
        ``PipelineCallback``) is chained behind a clock that notes when the last step ended, so
        the call splits into denoise and decode time. The previous attention processors are
        back in place when this returns or raises. Every backbone renders through this one
        method; the hooks above say what differs.
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigurationError(
                f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}"
            )
        options = self.parse_options(options)
        size = {"width": layout.width, "height": layout.height}
        pipeline_kwargs = self.call_inputs(pipeline_kwargs, **size)
        if "init_image" in pipeline_kwargs:  # img2img: the stock pipelines' name for it
            pipeline_kwargs["image"] = pipeline_kwargs.pop("init_image")
        pipeline_kwargs.update(self.option_inputs(options))
        guidance = self.call_guidance(guidance_scale, pipeline_kwargs)
        if guidance and conditioning.negative_prompt_embeds is None:
            raise ConfigurationError(
                "guidance needs negative embeddings; encode with guidance=True"
            )
        inputs = self.pipeline_inputs(conditioning, guidance=guidance, num_images=num_images)
        call = StockCall(steps=steps, num_images=num_images, options=options, inputs=inputs)
        with self.attention_context(
            conditioning,
            layout,
            guidance=guidance,
            cache_kv=self.cache_kv and steps > 1,
            pipeline_kwargs=pipeline_kwargs,
            call=call,
        ):
            for wrap in call.step_callbacks:
                pipeline_kwargs["callback_on_step_end"] = wrap(
                    pipeline_kwargs.get("callback_on_step_end")
                )
            output, denoise_seconds, decode_seconds = timed_call(
                self.pipe,
                **inputs,
                **self.size_inputs(layout),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type=output_type,
                **pipeline_kwargs,
            )
        nsfw = getattr(output, "nsfw_content_detected", None)
        return Rendered(
            images=list(output.images),
            nsfw_content_detected=None if nsfw is None else [bool(x) for x in nsfw],
            denoise_seconds=denoise_seconds,
            decode_seconds=decode_seconds,
        )
