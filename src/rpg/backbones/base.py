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

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span
from rpg.backbones.calls import (
    OUTPUT_TYPES,
    PreparedInputs,
    Rendered,
    StepClock,
    StockCall,
    timed_call,
)
from rpg.backbones.loading import ModelInfo, resolve_device, resolve_dtype, resolve_model
from rpg.backbones.options import BackboneOptions, NoOptions, validate_options
from rpg.backbones.packing import pack_segments, pad_tokens, token_windows
from rpg.backbones.schedulers import (
    DEFAULT_SCHEDULER,
    check_scheduler,
    make_scheduler,
    scheduler_name,
)
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

    from rpg.models import GenerationRequest, RegionPlan

__all__ = [
    "LOAD_OPTIONS",
    "OUTPUT_TYPES",
    "Backbone",
    "PreparedInputs",
    "Rendered",
    "StepClock",
    "StockCall",
    "pack_segments",
    "pad_tokens",
    "timed_call",
    "token_windows",
]

log = logging.getLogger(__name__)

#: Keyword options every backbone's ``load`` understands (besides device and dtype).
LOAD_OPTIONS = ("config", "allow_download", "cache_dir")


class Backbone(ABC):
    """A stock diffusers pipeline plus what regional prompting needs from it.

    Subclasses set the class attributes and implement :meth:`encode_texts`; the rest has working
    defaults for pipelines that take ``prompt_embeds`` / ``negative_prompt_embeds``,
    ``output_type`` and ``callback_on_step_end``, as the diffusers text-to-image pipelines do.
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
        #: Whether a request without a scheduler keeps whatever scheduler the pipeline holds
        #: at call time (a pipeline given to ``RPG.from_pipeline``: it is the user's), rather
        #: than getting :attr:`default_scheduler`.
        self.keeps_pipeline_scheduler = False
        #: Project each layer's text context once per call and reuse it at every step
        #: (``regional(..., cache_kv=True)``): same pixels, less time, the keys' and values'
        #: memory for the call. Set ``False`` when memory is tighter than time.
        self.cache_kv: bool = True
        self._long_prompts_noted: set[str] = set()

    # ----------------------------------------------------------------- discovery and loading

    @classmethod
    @abstractmethod
    def pipeline_class(cls) -> type:
        """The stock diffusers pipeline class this backbone drives."""

    @classmethod
    def detect(cls, info: ModelInfo) -> bool:
        """Whether this backbone can load the model ``info`` describes (no weights are read)."""
        if info.pipeline_class_name is not None:
            return info.pipeline_class_name in cls.pipeline_class_names
        return info.checkpoint_type in cls.checkpoint_types

    @classmethod
    def accepts_pipeline(cls, pipe: Any) -> bool:
        """Whether an existing pipeline object is one this backbone drives."""
        return type(pipe) is cls.pipeline_class()

    @classmethod
    def load(
        cls,
        source: ModelInfo | str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        **options: Any,
    ) -> Self:
        """Load the model (see :func:`rpg.backbones.loading.resolve_model`) onto ``device``.

        ``options``: ``config`` (diffusers folder describing a single-file checkpoint),
        ``allow_download`` (fetch a hub id that is not cached), ``cache_dir``; subclasses may
        accept more (e.g. ControlNet models).
        """
        unknown = sorted(set(options) - set(cls.load_options()))
        if unknown:
            raise ConfigurationError(
                f"backbone {cls.name!r} does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(cls.load_options())}"
            )
        resolve_keys = ("config", "allow_download", "cache_dir")
        resolve_opts = {k: options.pop(k) for k in resolve_keys if k in options}
        info = source if isinstance(source, ModelInfo) else resolve_model(source, **resolve_opts)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        pipe = cls.load_pipeline(info, dtype=torch_dtype, **options)
        pipe = pipe.to(torch_device)
        return cls(pipe, info=info)

    @classmethod
    def load_options(cls) -> tuple[str, ...]:
        """Names of the keyword options :meth:`load` accepts."""
        return LOAD_OPTIONS

    @classmethod
    @abstractmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        """Build the stock pipeline for ``info`` (on the CPU; :meth:`load` moves it)."""

    @classmethod
    def from_pipeline(cls, pipe: Any) -> Self:
        """Wrap a pipeline object someone already has (its device and dtype are kept)."""
        if not cls.accepts_pipeline(pipe):
            raise ConfigurationError(
                f"backbone {cls.name!r} drives {cls.pipeline_class().__name__}, "
                f"not {type(pipe).__name__}"
            )
        backbone = cls(pipe)
        backbone.keeps_pipeline_scheduler = True
        return backbone

    # ----------------------------------------------------------------- editing

    def inpaint_pipeline_class(self) -> type | None:
        """The stock inpainting pipeline class for this model (``None``: the family or this
        diffusers has none)."""
        from rpg.backbones.inpaint import diffusers_class

        return diffusers_class(self.inpaint_pipeline_name)

    def inpaint_refusal(self) -> str | None:
        """Why this model cannot be edited although diffusers has its inpainting pipeline
        (``None``: it can)."""
        return None

    def inpaint_backbone_class(self) -> type[Backbone]:
        """The backbone class that drives the inpainting pipeline (the family's own)."""
        return type(self)

    def inpaint_backbone(self) -> Backbone:
        """This model's stock inpainting pipeline, sharing its modules, as a backbone.

        It encodes, lays out and attends exactly as this one does, so ``edit`` renders through
        the same route as ``generate``. A family without an inpainting pipeline is a
        :class:`~rpg.errors.ConfigurationError` here, before any planning or encoding.
        """
        import diffusers

        from rpg.backbones.inpaint import build_inpaint_pipeline

        cls = self.inpaint_pipeline_class()
        why = self.inpaint_refusal()
        if cls is None or why is not None:
            wanted = self.inpaint_pipeline_name
            if why is None:
                why = (
                    f"diffusers {diffusers.__version__} has no {wanted}"
                    if wanted
                    else "the family has no stock inpainting pipeline"
                )
            raise ConfigurationError(
                f"rpg edit cannot repaint with {self.name!r}: {why}; edit with an SD, SDXL, "
                "FLUX.1 or SD3 model, or regenerate with a changed plan instead"
            )
        painter = self.inpaint_backbone_class()(
            build_inpaint_pipeline(self.pipe, cls), info=self.info
        )
        painter.inpainting = True
        painter.cache_kv = self.cache_kv
        painter.keeps_pipeline_scheduler = self.keeps_pipeline_scheduler
        return painter

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

    def request_scheduler(self) -> str:
        """The scheduler name a request without one records (and renders with).

        A loaded model gets :attr:`default_scheduler`; a wrapped pipeline keeps the one it holds
        now, under its short name (see :func:`~rpg.backbones.schedulers.scheduler_name`).
        """
        if self.keeps_pipeline_scheduler:
            return scheduler_name(self.pipe.scheduler)
        return self.default_scheduler

    def scheduler_named(self, name: str) -> Any:
        """The scheduler object for ``name``: built once from the model's config and reused;
        ``"default"`` is the scheduler the pipeline came with."""
        key = check_scheduler(name)
        if key == "default":
            return self._own_scheduler
        if key not in self._schedulers:
            self._schedulers[key] = make_scheduler(key, self.scheduler_config)
        return self._schedulers[key]

    def set_scheduler(self, name: str = DEFAULT_SCHEDULER) -> None:
        """Use scheduler ``name`` (see :mod:`rpg.backbones.schedulers`) until changed again.

        Renders through ``RPG`` do not need this: they swap the request's scheduler in for the
        call and put the pipeline's back afterwards (:meth:`using_scheduler`).
        """
        self.pipe.scheduler = self.scheduler_named(name)

    @contextmanager
    def using_scheduler(self, name: str | None) -> Iterator[None]:
        """Render with scheduler ``name`` inside the block; the pipeline's scheduler is back in
        place afterwards, also on error. ``None`` leaves the pipeline's scheduler alone."""
        previous = self.pipe.scheduler
        if name is not None:
            wanted = self.scheduler_named(name)
            if self.keeps_pipeline_scheduler and scheduler_name(previous) == check_scheduler(name):
                wanted = previous  # the user's own object, with any settings of theirs
            self.pipe.scheduler = wanted
        try:
            yield
        finally:
            self.pipe.scheduler = previous

    # ----------------------------------------------------------------- encoding

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
        :meth:`parse_options`) may change what is packed; the base ignores them.
        """
        del options
        has_base = plan.base_prompt is not None
        texts = ([plan.base_prompt] if plan.base_prompt is not None else []) + plan.prompts
        # A canvas's background paints with the base prompt, else with the whole prompt,
        # packed last for it.
        background = plan.has_background and not has_base
        whole = []
        if background:
            from rpg.models import whole_image_text

            whole = [whole_image_text(plan, prompt)]
        embeds, spans = pack_segments(texts + whole, self.encode_texts)
        global_span = spans.pop() if background else None
        self._note_long_prompts(texts, spans, has_base)
        base_span = spans[0] if has_base else None
        region_spans = tuple(spans[1:] if has_base else spans)

        negative = None
        negative_span: Span | None = None
        negative_region_spans: tuple[Span, ...] | None = None
        negative_base_span: Span | None = None
        if guidance:
            regions = plan.regions
            if all(r.negative_prompt is None for r in regions):
                negative, (negative_span,) = pack_segments([negative_prompt], self.encode_texts)
            else:
                own = [
                    negative_prompt if r.negative_prompt is None else r.negative_prompt
                    for r in regions
                ]
                lead = has_base or background  # the background's negative half reads it too
                negative, neg_spans = pack_segments(
                    [negative_prompt, *own] if lead else own, self.encode_texts
                )
                negative_base_span = neg_spans[0] if lead else None
                negative_region_spans = tuple(neg_spans[1:] if lead else neg_spans)
            length = max(embeds.shape[1], negative.shape[1])
            embeds, negative = pad_tokens(embeds, length), pad_tokens(negative, length)

        pooled, negative_pooled = self.pooled_embeds(
            plan, negative_prompt, guidance=guidance, prompt=prompt
        )
        return RegionalConditioning(
            prompt_embeds=embeds,
            region_spans=region_spans,
            base_span=base_span,
            negative_prompt_embeds=negative,
            negative_span=negative_span,
            negative_region_spans=negative_region_spans,
            negative_base_span=negative_base_span,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            global_span=global_span,
        )

    def _note_long_prompts(self, texts: list[str], spans: list[Span], has_base: bool) -> None:
        """Say once per prompt (and loaded model) that it is encoded as several windows.

        Nothing is truncated (see :func:`token_windows`), but the windows are encoded apart, so
        words in different windows do not see each other: worth one line, not silence.
        """
        window = int(getattr(getattr(self.pipe, "tokenizer", None), "model_max_length", 0) or 0)
        if not 2 < window < 100_000:
            return
        noted = self._long_prompts_noted
        for i, (text, (start, end)) in enumerate(zip(texts, spans, strict=True)):
            windows = (end - start) // window
            if windows < 2 or text in noted:
                continue
            noted.add(text)
            what = "the base prompt" if has_base and i == 0 else f"region {i + (not has_base)}"
            shown = text if len(text) <= 40 else text[:37] + "..."
            log.warning(
                "%s (%r) is longer than the text encoder's %d-token window; it is encoded as %d "
                "windows of up to %d tokens, and words in different windows do not see each "
                "other (shorten it to keep it in one)",
                what,
                shown,
                window,
                windows,
                window - 2,
            )

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
        passed) for backbones whose processors need it (the MM-DiT ones).
        """
        from rpg.attention.install import regional

        del pipeline_kwargs, call
        return regional(
            self.attention_models(), conditioning, layout, guidance=guidance, cache_kv=cache_kv
        )

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
                height=layout.height,
                width=layout.width,
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
