"""Stable Diffusion 1.x / 2.x: the stock ``StableDiffusionPipeline`` with regional attention.

Encoding mirrors the stock ``encode_prompt`` for one CLIP text encoder (same token ids, same
attention-mask rule, same dtype), but a prompt longer than 75 tokens becomes several 77-token
windows encoded separately and concatenated instead of being truncated. Textual-inversion tokens
are expanded through the pipeline's own ``maybe_convert_prompt`` when it has one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rpg.backbones.base import Backbone, token_windows
from rpg.backbones.loading import ModelInfo, load_pipeline
from rpg.backbones.options import BackboneOptions, UNetOptions

__all__ = ["StableDiffusionBackbone"]


class StableDiffusionBackbone(Backbone):
    """SD 1.x and 2.x checkpoints (folders, single files, cached hub ids, ``tiny-sd``)."""

    name: ClassVar[str] = "sd"
    description: ClassVar[str] = "Stable Diffusion 1.x / 2.x (StableDiffusionPipeline)"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    checkpoint_types: ClassVar[tuple[str, ...]] = ("v1", "v2")
    inpaint_pipeline_name: ClassVar[str] = "StableDiffusionInpaintPipeline"
    img2img_pipeline_name: ClassVar[str] = "StableDiffusionImg2ImgPipeline"
    options_model: ClassVar[type[BackboneOptions]] = UNetOptions

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    @classmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        # The safety checker is a separate model that blacks out images; rpg leaves that choice
        # to the caller (``RPG.from_pipeline`` with a pipeline that has one keeps it).
        return load_pipeline(
            cls.pipeline_class(),
            info,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            **options,
        )

    def _prompt_text(self, text: str) -> str:
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        if convert is None:
            return text
        return str(convert(text, self.pipe.tokenizer))

    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Every text as ``[1, 77·k, D]``: its ``k`` token windows through the text encoder."""
        tokenizer, encoder = self.pipe.tokenizer, self.pipe.text_encoder
        windows = [token_windows(tokenizer, self._prompt_text(t)) for t in texts]
        flat = [w for ws in windows for w in ws]
        device = self.device
        ids = torch.tensor(flat, dtype=torch.long, device=device)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            # As the stock tokenizer call masks it: BOS..EOS are real tokens, the rest padding.
            eos_pos = (ids == tokenizer.eos_token_id).int().argmax(dim=1, keepdim=True)
            positions = torch.arange(ids.shape[1], device=device).unsqueeze(0)
            mask = (positions <= eos_pos).long()
        with torch.no_grad():
            hidden = encoder(ids, attention_mask=mask)[0]
        dtype = encoder.dtype if encoder is not None else self.dtype
        hidden = hidden.to(dtype=dtype, device=device)
        out: list[torch.Tensor] = []
        start = 0
        for ws in windows:
            chunk = hidden[start : start + len(ws)]
            out.append(chunk.reshape(1, -1, chunk.shape[-1]))
            start += len(ws)
        return out
