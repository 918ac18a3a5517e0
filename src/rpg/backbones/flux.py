"""FLUX.1 [dev] / [schnell] (``FluxPipeline``): a :class:`~rpg.backbones.dit.JointBackbone`.

How prompts are packed and what regional joint attention does are the joint backbone's
(:mod:`rpg.backbones.dit`); this module holds what is FLUX.1's own: T5 + CLIP encoders, the
distilled guidance embedding and true CFG, and the fill / inpaint pipelines ``rpg edit`` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.backbones.dit import JointBackbone
from rpg.backbones.options import BackboneOptions, FluxOptions

if TYPE_CHECKING:
    from rpg.models import GenerationRequest

__all__ = ["FluxBackbone"]


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
    img2img_pipeline_name: ClassVar[str] = "FluxImg2ImgPipeline"

    def img2img_refusal(self) -> str | None:
        """A fill transformer reads the masked image as extra channels: no plain img2img."""
        latent = int(self.pipe.vae.config.latent_channels) * 4
        if int(self.pipe.transformer.config.in_channels) > latent:
            return "a FLUX fill transformer takes a mask as well; use rpg edit with it"
        return None

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
