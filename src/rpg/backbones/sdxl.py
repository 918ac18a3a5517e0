"""SDXL: the stock ``StableDiffusionXLPipeline`` with regional attention.

SDXL conditions its UNet on two things: cross-attention over the concatenated penultimate hidden
states of two CLIP encoders (CLIP ViT-L and OpenCLIP ViT-bigG), and a global ``text_time``
embedding made of the second encoder's pooled, projected output plus six size/crop numbers
(``add_time_ids``). Regional prompting applies to the first only: every prompt is encoded by both
encoders window by window, exactly as the stock ``encode_prompt`` encodes one 77-token window,
and packed along the token axis. The global embedding has no spatial extent, so it comes from one
text: the base prompt, or, without one, the whole prompt (see :meth:`pooled_embeds`). The
pipeline builds ``add_time_ids`` itself from the image size, as it does for any caller that
passes ``pooled_prompt_embeds``.

Works for SDXL fine-tunes (folder, single file, cached hub id) and distilled models such as
SDXL-Turbo (``guidance_scale=0``, 1–4 steps, no negative half).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.backbones.base import Backbone, token_windows
from rpg.backbones.loading import ModelInfo, load_pipeline
from rpg.backbones.options import BackboneOptions, UNetOptions
from rpg.errors import ConfigurationError
from rpg.models import whole_image_text

if TYPE_CHECKING:
    from rpg.models import RegionPlan

__all__ = ["StableDiffusionXLBackbone"]


class StableDiffusionXLBackbone(Backbone):
    """SDXL-architecture checkpoints (base, fine-tunes, Turbo; folders, single files, hub ids)."""

    name: ClassVar[str] = "sdxl"
    description: ClassVar[str] = "Stable Diffusion XL (StableDiffusionXLPipeline)"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    checkpoint_types: ClassVar[tuple[str, ...]] = ("xl_base",)
    inpaint_pipeline_name: ClassVar[str] = "StableDiffusionXLInpaintPipeline"
    img2img_pipeline_name: ClassVar[str] = "StableDiffusionXLImg2ImgPipeline"
    options_model: ClassVar[type[BackboneOptions]] = UNetOptions

    def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None:
        super().__init__(pipe, info=info)
        if getattr(pipe, "text_encoder", None) is None or pipe.text_encoder_2 is None:
            raise ConfigurationError(
                f"{type(pipe).__name__} lacks one of its two text encoders; rpg's SDXL backbone "
                "needs both (refiner-style models with only text_encoder_2 are not supported)"
            )
        self._windows_memo: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    @classmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        return load_pipeline(cls.pipeline_class(), info, dtype=dtype, **options)

    # ----------------------------------------------------------------- encoding

    def _zero_empty(self) -> bool:
        """Whether an empty negative prompt is encoded as zeros, as the stock pipeline does.

        SDXL base ships ``force_zeros_for_empty_prompt=True``: with no negative prompt the
        unconditional embeddings (token and pooled) are zeros, not the encoding of ``""``.
        Positive prompts are never empty (the models reject them), so an empty text reaching
        the encoder is always a negative one.
        """
        return bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False))

    def _windows(self, tokenizer: Any, text: str) -> list[list[int]]:
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        if convert is not None:
            text = str(convert(text, tokenizer))
        return token_windows(tokenizer, text)

    def _encode_windows(self, texts: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per text: ``[k, 77, D1 + D2]`` hidden states and ``[k, P]`` pooled outputs (from the
        call's memory for texts already encoded in this :meth:`encode`)."""
        memo = self._windows_memo if self._windows_memo is not None else {}
        for text in dict.fromkeys(texts):
            if text not in memo:
                # One text per forward, as the stock encode_prompt runs it: the same numbers
                # bit for bit (a batch of several texts may round differently).
                (hidden,), (pooled,) = self._encode_windows_now([text])
                memo[text] = (hidden, pooled)
        return [memo[t][0] for t in texts], [memo[t][1] for t in texts]

    def _encode_windows_now(
        self, texts: list[str]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pipe = self.pipe
        encoders = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
        per_encoder: list[list[list[list[int]]]] = [
            [self._windows(tok, t) for t in texts] for tok, _ in encoders
        ]
        # The two tokenizers normally split a text alike; if not, the shorter side gets empty
        # windows so both encoders contribute to every window of the span.
        for i in range(len(texts)):
            k = max(len(ws[i]) for ws in per_encoder)
            for (tok, _), ws in zip(encoders, per_encoder, strict=True):
                if len(ws[i]) < k:
                    ws[i] = ws[i] + token_windows(tok, "")[:1] * (k - len(ws[i]))
        device = self.device
        hidden_parts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for (_, encoder), ws in zip(encoders, per_encoder, strict=True):
            ids = torch.tensor([w for t in ws for w in t], dtype=torch.long, device=device)
            with torch.no_grad():
                out = encoder(ids, output_hidden_states=True)
            # SDXL reads the penultimate layer of both encoders, and the second one's pooled,
            # projected output (``text_embeds``) for the global embedding.
            hidden_parts.append(out.hidden_states[-2])
            pooled = out[0]
        assert pooled is not None and pooled.ndim == 2
        dtype = pipe.text_encoder_2.dtype
        hidden = torch.cat(hidden_parts, dim=-1).to(dtype=dtype, device=device)
        pooled = pooled.to(dtype=dtype, device=device)
        counts = [len(t) for t in per_encoder[0]]
        return list(hidden.split(counts)), list(pooled.split(counts))

    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Every text as ``[1, 77·k, D1 + D2]``: its ``k`` windows through both encoders."""
        hidden, _ = self._encode_windows(texts)
        out = [h.reshape(1, -1, h.shape[-1]) for h in hidden]
        if self._zero_empty():
            out = [torch.zeros_like(h) if t == "" else h for t, h in zip(texts, out, strict=True)]
        return out

    def pooled_text(self, plan: RegionPlan, prompt: str | None = None) -> str:
        """The text whose pooled embedding conditions the whole image
        (:func:`~rpg.models.whole_image_text`). For a one-region plan of the prompt itself it
        is the prompt the stock pipeline would pool."""
        return whole_image_text(plan, prompt)

    def encode(self, plan: RegionPlan, negative_prompt: str = "", **kwargs: Any) -> Any:
        """As the base, with each text's windows remembered for the call, so the base prompt
        and the negative prompt go through the encoders once for tokens and pooled vector."""
        self._windows_memo = {}
        try:
            return super().encode(plan, negative_prompt, **kwargs)
        finally:
            self._windows_memo = None

    def _pooled(self, text: str) -> torch.Tensor:
        """``[1, P]``: the stock pipeline's pooled embedding of ``text`` (first window only)."""
        _, pooled = self._encode_windows([text])
        first = pooled[0][:1]
        if text == "" and self._zero_empty():
            return torch.zeros_like(first)
        return first

    def pooled_embeds(
        self,
        plan: RegionPlan,
        negative_prompt: str,
        *,
        guidance: bool,
        prompt: str | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pooled embeddings of :meth:`pooled_text` and, with guidance, of the negative prompt.

        Like the stock pipeline, a text longer than one window is pooled from its first
        window (CLIP's pooled output is one vector per window).
        """
        positive = self._pooled(self.pooled_text(plan, prompt))
        negative = self._pooled(negative_prompt) if guidance else None
        return positive, negative
