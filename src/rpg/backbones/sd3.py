"""SD3 / SD3.5 (``StableDiffusion3Pipeline``): a :class:`~rpg.backbones.dit.JointBackbone`.

How prompts are packed and what regional joint attention does are the joint backbone's
(:mod:`rpg.backbones.dit`); this module holds what is SD3's own: three text encoders (CLIP-L,
CLIP-G, T5) and the CFG batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rpg.backbones.dit import JointBackbone

__all__ = ["SD3Backbone"]


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
    img2img_pipeline_name: ClassVar[str] = "StableDiffusion3Img2ImgPipeline"
    stock_t5_length: ClassVar[int] = 256

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

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
