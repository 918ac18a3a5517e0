"""The backbone contract: load a stock diffusers pipeline, encode a plan, denoise regionally.

A backbone wraps one *stock* pipeline object and adds only what regional prompting needs:

* :meth:`Backbone.encode` turns a :class:`~rpg.models.RegionPlan` into packed embeddings
  ``[base | region 0 | region 1 | ...]`` and the token span of every prompt. The plan logic
  (which texts, shared or per-region negatives, de-duplication, padding the two halves to one
  length) and the span arithmetic live here, in one place; a subclass only says how one list of
  texts becomes embeddings (:meth:`Backbone.encode_texts`), so spans always come from the actual
  encodings.
* :meth:`Backbone.denoise` calls the stock pipeline with ``prompt_embeds`` /
  ``negative_prompt_embeds`` (plus whatever :meth:`Backbone.pipeline_inputs` adds, such as SDXL's
  pooled embeddings or a ControlNet image) inside :func:`rpg.attention.regional`, and returns
  latents; :meth:`Backbone.decode` turns them into images, so decoding can be timed on its own.

SD 1.x/2.x (:mod:`rpg.backbones.sd`) is the reference implementation; SDXL, ControlNet and
inpainting backbones subclass the same base and override the few hooks that differ.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span
from rpg.backbones.loading import ModelInfo, resolve_device, resolve_dtype, resolve_model
from rpg.backbones.schedulers import DEFAULT_SCHEDULER, check_scheduler, make_scheduler
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

    from rpg.models import RegionPlan

__all__ = ["LOAD_OPTIONS", "Backbone", "pack_segments", "pad_tokens", "token_windows"]

log = logging.getLogger(__name__)

#: Keyword options every backbone's ``load`` understands (besides device and dtype).
LOAD_OPTIONS = ("config", "allow_download", "cache_dir")


def token_windows(tokenizer: Any, text: str) -> list[list[int]]:
    """Token ids of ``text`` as full-length windows ``[BOS, ≤75 tokens, EOS, pad...]``.

    CLIP text encoders see at most ``model_max_length`` (77) positions, so a long prompt is cut
    into consecutive chunks of 75 content tokens, each wrapped in BOS/EOS and padded like the
    stock pipeline pads, and encoded as its own window: nothing is truncated. An empty text is
    one window, exactly what the stock pipeline encodes for ``""``. For a prompt of at most 75
    tokens the ids equal ``tokenizer(text, padding="max_length", truncation=True)``.
    """
    max_length = int(tokenizer.model_max_length)
    if max_length < 3 or max_length > 100_000:
        raise ConfigurationError(f"tokenizer has no usable model_max_length ({max_length})")
    # Long prompts are intended here; mark transformers' once-only "sequence too long" warning
    # as already shown, since it would claim the windows cause indexing errors.
    shown = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(shown, dict):
        shown["sequence-length-is-longer-than-the-specified-maximum"] = True
    content = list(tokenizer(text, add_special_tokens=False).input_ids)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    size = max_length - 2
    chunks = [content[i : i + size] for i in range(0, len(content), size)] or [[]]
    return [[bos, *chunk, eos] + [pad] * (size - len(chunk)) for chunk in chunks]


def pack_segments(
    texts: Sequence[str], encode: Callable[[list[str]], list[torch.Tensor]]
) -> tuple[torch.Tensor, list[Span]]:
    """Encode ``texts`` and pack them along the token axis; return the tensor and their spans.

    Each distinct text is encoded once (``encode`` returns one ``[1, T_i, D]`` tensor per text)
    and repeated texts share one span — a span is only an index range, so two regions may read
    the same tokens. This is the single place where spans are computed from encodings.
    """
    unique = list(dict.fromkeys(texts))
    tensors = encode(unique)
    if len(tensors) != len(unique):
        raise RuntimeError(f"encoder returned {len(tensors)} tensors for {len(unique)} texts")
    spans: dict[str, Span] = {}
    start = 0
    for text, tensor in zip(unique, tensors, strict=True):
        spans[text] = (start, start + int(tensor.shape[1]))
        start += int(tensor.shape[1])
    return torch.cat(tensors, dim=1), [spans[t] for t in texts]


def pad_tokens(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Lengthen ``embeds`` ``[B, T, D]`` to ``length`` tokens by repeating its own tokens.

    The padding is never read by the regional processor (it lies outside every span); it exists
    because diffusers concatenates positive and negative embeddings into one batch, which needs
    one token length. Copies rather than zeros keep the tensor a plausible CLIP sequence for any
    code that does look at it.
    """
    current = embeds.shape[1]
    if current >= length:
        return embeds
    repeats = -(-length // current)
    return embeds.repeat(1, repeats, 1)[:, :length]


class Backbone(ABC):
    """A stock diffusers pipeline plus what regional prompting needs from it.

    Subclasses set the class attributes and implement :meth:`encode_texts`; the rest has working
    defaults for pipelines that take ``prompt_embeds`` / ``negative_prompt_embeds`` and return
    latents with ``output_type="latent"``.
    """

    #: Registry name (``rpg plugins`` lists it; ``RPG.from_pretrained(..., backbone=name)``).
    name: ClassVar[str]
    #: One line for ``rpg plugins``.
    description: ClassVar[str] = ""
    #: ``_class_name`` values of ``model_index.json`` this backbone loads.
    pipeline_class_names: ClassVar[tuple[str, ...]] = ()
    #: diffusers' single-file model types (``infer_diffusers_model_type``) this backbone loads.
    checkpoint_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None:
        self.pipe = pipe
        self.info = info
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler is None:
            raise ConfigurationError(f"{type(pipe).__name__} has no scheduler")
        #: The model's own scheduler config: every named scheduler is built from this one.
        self.scheduler_config: dict[str, Any] = dict(scheduler.config)
        self._schedulers: dict[str, Any] = {}
        self._scheduler_name: str | None = None
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
        return cls(pipe)

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

    def set_scheduler(self, name: str = DEFAULT_SCHEDULER) -> None:
        """Use scheduler ``name`` (see :mod:`rpg.backbones.schedulers`) for the next renders."""
        key = check_scheduler(name)
        if key == self._scheduler_name:
            return
        if key not in self._schedulers:
            self._schedulers[key] = make_scheduler(key, self.scheduler_config)
        self.pipe.scheduler = self._schedulers[key]
        self._scheduler_name = key

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
    ) -> RegionalConditioning:
        """Encode ``plan`` into packed embeddings and spans, and the negative half if guided.

        Positive: ``[base | region 0 | region 1 | ...]`` (repeated prompts share a span).
        Negative, when ``guidance``: if no region has its own ``negative_prompt``, one
        ``negative_prompt`` encoding read by every unconditional query (plain attention, as in
        the stock pipeline); otherwise ``[negative base | region negatives...]`` packed like the
        positives, where a region without its own uses ``negative_prompt``. The shorter half is
        padded with copies of its own tokens so both have one length. ``prompt`` (the user's
        whole prompt) goes to :meth:`pooled_embeds`.
        """
        has_base = plan.base_prompt is not None
        texts = ([plan.base_prompt] if plan.base_prompt is not None else []) + plan.prompts
        embeds, spans = pack_segments(texts, self.encode_texts)
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
                negative, neg_spans = pack_segments(
                    [negative_prompt, *own] if has_base else own, self.encode_texts
                )
                negative_base_span = neg_spans[0] if has_base else None
                negative_region_spans = tuple(neg_spans[1:] if has_base else neg_spans)
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

    # ----------------------------------------------------------------- denoising and decoding

    def layout(self, plan: RegionPlan, width: int, height: int) -> RegionalLayout:
        """Where the plan's regions fall on a ``width × height`` image at this model's latents."""
        return RegionalLayout.from_plan(plan, height, width, latent_factor=self.latent_factor)

    def pipeline_inputs(self, conditioning: RegionalConditioning) -> dict[str, Any]:
        """The conditioning as stock-pipeline keyword arguments."""
        inputs: dict[str, Any] = {"prompt_embeds": conditioning.prompt_embeds}
        if conditioning.negative_prompt_embeds is not None:
            inputs["negative_prompt_embeds"] = conditioning.negative_prompt_embeds
        if conditioning.pooled_prompt_embeds is not None:
            inputs["pooled_prompt_embeds"] = conditioning.pooled_prompt_embeds
        if conditioning.negative_pooled_prompt_embeds is not None:
            inputs["negative_pooled_prompt_embeds"] = conditioning.negative_pooled_prompt_embeds
        return inputs

    def denoise(
        self,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images: int = 1,
        **pipeline_kwargs: Any,
    ) -> torch.Tensor:
        """Run the stock pipeline with regional attention and return its latents.

        ``pipeline_kwargs`` go to the pipeline call unchanged (``callback_on_step_end``,
        ``eta``, ``cross_attention_kwargs``, a ControlNet ``image`` ...). The previous attention
        processors are back in place when this returns or raises.
        """
        from rpg.attention.install import regional

        guidance = self.uses_guidance(guidance_scale)
        if guidance and conditioning.negative_prompt_embeds is None:
            raise ConfigurationError(
                "guidance_scale > 1 needs negative embeddings; encode with guidance=True"
            )
        inputs = self.pipeline_inputs(conditioning)
        if not guidance:
            inputs = {k: v for k, v in inputs.items() if not k.startswith("negative_")}
        with regional(
            self.attention_models(),
            conditioning,
            layout,
            guidance=guidance,
            cache_kv=self.cache_kv and steps > 1,
        ):
            output = self.pipe(
                **inputs,
                height=layout.height,
                width=layout.width,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                num_images_per_prompt=num_images,
                generator=generator,
                output_type="latent",
                return_dict=True,
                **pipeline_kwargs,
            )
        latents: torch.Tensor = output.images
        return latents

    def decode(
        self,
        latents: torch.Tensor,
        *,
        output_type: str = "pil",
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> list[Any]:
        """Decode latents through the VAE and the pipeline's image processor.

        The same public calls the stock pipeline makes after denoising (VAE decode of
        ``latents / scaling_factor``, then ``image_processor.postprocess``); no safety checker.
        Returns one image per latent: PIL images, or ``[H, W, 3]`` float arrays / ``[3, H, W]``
        tensors for ``"np"`` / ``"pt"``.
        """
        vae = self.pipe.vae
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        with torch.no_grad():
            image = vae.decode(scaled, return_dict=False, generator=generator)[0]
        batch = image.shape[0]
        processed = self.pipe.image_processor.postprocess(
            image, output_type=output_type, do_denormalize=[True] * batch
        )
        return list(processed)
