"""FLUX.2 [klein]: the stock ``Flux2KleinPipeline`` with regional joint attention.

Packed like FLUX.1 (see :mod:`rpg.backbones.dit`): each prompt is encoded on its own by the
pipeline's own Qwen3 encoding (the chat template, three hidden layers side by side); the base
prompt — and the one prompt of a one-region plan without base — keeps the stock padding to 512
tokens, region prompts their real token length (Qwen3 is causal: those tokens equal the padded
encoding's). There is no pooled embedding.

FLUX.2's RoPE numbers text tokens; each packed prompt is numbered from 0, as when it is encoded
alone (:func:`~rpg.attention.joint_flux2.regional_flux2`). Guidance is klein's own: the base
models run classifier-free guidance with ``guidance_scale > 1`` — a separate forward over the
negative prompt, stock attention — and the step-distilled models ignore it.

Editing (``rpg edit``) runs ``Flux2KleinInpaintPipeline``, which appends the image to repaint,
VAE-encoded and packed, to the joint sequence after the noisy image tokens: ``[text | noisy
image | condition image]``. The condition tokens lie on the same patch grid as the noisy ones
(the pipeline renders at the input image's size), so rpg treats them as a second copy of the
canvas (``JointRegions.grid_copies = 2``): the condition token of a cell belongs to that cell's
region, canvas layer or background, as its noisy token does. Region ``r``'s text sees the noisy
and condition tokens of ``R_r``; every image query (noisy or condition) of ``R_r`` sees
``text(r)`` and, by the image-attention scope, all noisy and condition tokens (``"global"``) or
those of ``R_r`` (``"region"``); the base text sees all of them. The pipeline's optional
``image_reference`` (tokens of another size, on no grid cell) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.joint import JointRegions
from rpg.backbones.dit import JointBackbone
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.backbones.loading import ModelInfo

__all__ = ["Flux2KleinBackbone"]


class Flux2KleinBackbone(JointBackbone):
    """FLUX.2 [klein] 4B / 9B, base and step-distilled (``Flux2KleinPipeline``).

    ``guidance_scale > 1`` is classifier-free guidance with the request's negative prompt on the
    base models (the pipeline's own rule: a step-distilled model, ``is_distilled`` in its config,
    ignores it). Inpainting (``rpg edit``) runs ``Flux2KleinInpaintPipeline`` with the image to
    repaint as a second copy of the canvas (see the module). Reference images (``image=`` of the
    text-to-image pipeline, ``image_reference=`` of the inpainting one) and single-file
    transformer checkpoints are not supported.
    """

    name: ClassVar[str] = "flux2-klein"
    description: ClassVar[str] = "FLUX.2 [klein] (Flux2KleinPipeline) with regional joint attention"
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("Flux2KleinPipeline",)
    transformer_class_name: ClassVar[str] = "Flux2Transformer2DModel"
    inpaint_pipeline_name: ClassVar[str] = "Flux2KleinInpaintPipeline"
    #: The pipeline's ``max_sequence_length``: Qwen3 tokens after the chat template, padded.
    stock_t5_length: ClassVar[int] = 512
    has_pooled: ClassVar[bool] = False
    default_guidance: ClassVar[float] = 4.0
    #: Qwen3 hidden layers the pipeline stacks into the text embedding (its default).
    text_layers: ClassVar[tuple[int, ...]] = (9, 18, 27)

    @classmethod
    def pipeline_class(cls) -> type:
        try:
            from diffusers import Flux2KleinPipeline
        except ImportError as err:  # FLUX.2 came with diffusers 0.36
            raise ConfigurationError(
                "FLUX.2 [klein] needs a diffusers with Flux2KleinPipeline (0.37 or newer); "
                "upgrade diffusers"
            ) from err
        found: type = Flux2KleinPipeline
        return found

    @classmethod
    def detect(cls, info: ModelInfo) -> bool:
        """The klein pipeline class with a FLUX.2 transformer, from ``model_index.json``."""
        if info.model_index is None:
            return False
        transformer = info.model_index.get("transformer") or [None, None]
        return (
            info.pipeline_class_name in cls.pipeline_class_names
            and transformer[-1] == cls.transformer_class_name
        )

    @classmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        """A diffusers folder or hub id; single-file klein transformers are not supported yet."""
        if info.kind == "file":
            raise ConfigurationError(
                f"{info.reference} is a single file; rpg loads FLUX.2 [klein] from a diffusers "
                "folder or hub id only (its single-file transformer conversion is untested "
                "here): save the pipeline with save_pretrained and pass that folder"
            )
        return super().load_pipeline(info, dtype=dtype, **options)

    def img2img_refusal(self) -> str | None:
        """diffusers has no klein img2img pipeline; klein's own ``image=`` is a reference image
        joined to the joint sequence, not a picture to denoise from."""
        return (
            "diffusers has no FLUX.2 [klein] img2img pipeline (Flux2KleinPipeline's image= is a "
            "reference image for editing, not a starting picture)"
        )

    def uses_guidance(self, guidance_scale: float) -> bool:
        """CFG as the pipeline runs it: above 1, and not on a step-distilled model."""
        return guidance_scale > 1 and not bool(self.pipe.config.get("is_distilled", False))

    def call_inputs(
        self, pipeline_kwargs: Mapping[str, Any], *, width: int, height: int
    ) -> dict[str, Any]:
        """Refuse reference images: their tokens would join the image sequence on no grid cell.

        When inpainting, ``image`` is the image to repaint — its condition tokens are a second
        copy of the canvas, so it must be the size being rendered (the pipeline renders at the
        image's own size, shrunk to at most 1024² pixels) — and ``image_reference`` the
        reference, refused."""
        image = pipeline_kwargs.get("image") if self.inpainting else None
        size = None
        if image is not None and hasattr(image, "size") and not isinstance(image, torch.Tensor):
            size = tuple(image.size)
        refusal = self._klein_refusal(pipeline_kwargs, width, height, size)
        if refusal is not None:
            raise ConfigurationError(refusal)
        return super().call_inputs(pipeline_kwargs, width=width, height=height)

    def edit_refusal(
        self, width: int, height: int, pipeline_kwargs: Mapping[str, Any]
    ) -> str | None:
        """The checks of :meth:`call_inputs`, before ``edit`` plans: the image to repaint is
        rendered at its own size (cut to whole 16-pixel patches)."""
        return self._klein_refusal(
            pipeline_kwargs, width // 16 * 16, height // 16 * 16, (width, height)
        )

    def _klein_refusal(
        self,
        pipeline_kwargs: Mapping[str, Any],
        width: int,
        height: int,
        image_size: tuple[int, ...] | None,
    ) -> str | None:
        reference = "image_reference" if self.inpainting else "image"
        if pipeline_kwargs.get(reference) is not None:
            return (
                f"{self.name} does not take klein's reference images with regional prompting: "
                f"their tokens lie on no cell of the layout — leave {reference!r} out"
            )
        if image_size is not None:
            w, h = image_size
            if w * h > 1024 * 1024 or (w // 16 * 16, h // 16 * 16) != (width, height):
                return (
                    f"{self.name} inpaints at the image's own size: the image is {w}x{h} but the "
                    f"layout is {width}x{height}; give an image of the size being rendered, at "
                    "most 1024x1024 pixels in area"
                )
        return None

    # ----------------------------------------------------------------- encoding

    def encode_stock(self, text: str) -> tuple[torch.Tensor, None]:
        """The pipeline's own encoding: chat template, padded to 512 tokens; no pooled part."""
        with torch.no_grad():
            embeds, _ = self.pipe.encode_prompt(
                prompt=text, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.stock_t5_length, text_encoder_out_layers=self.text_layers,
            )  # fmt: skip
        return embeds, None

    def _token_length(self, text: str) -> int:
        """Qwen3 tokens of ``text`` in the chat template, without padding (at most 512)."""
        tokenizer = self.pipe.tokenizer
        templated = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        ids = tokenizer(templated, truncation=True, max_length=self.stock_t5_length).input_ids
        return len(ids)

    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text through the pipeline's Qwen3 encoding at its real length (no padding)."""
        pipe = self.pipe
        out = []
        for text in texts:
            with torch.no_grad():
                embeds = pipe._get_qwen3_prompt_embeds(
                    text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, prompt=text,
                    device=self.device, max_sequence_length=self._token_length(text),
                    hidden_states_layers=self.text_layers,
                )  # fmt: skip
            out.append(embeds)
        return out

    # ----------------------------------------------------------------- rendering

    def regional_context(
        self,
        regions: JointRegions,
        *,
        guidance: bool,
        negative: torch.Tensor | None,
        num_images: int,
    ) -> AbstractContextManager[object]:
        """:func:`~rpg.attention.joint_flux2.regional_flux2`: FLUX.2's processors, packed text
        ids, and the negative forward told apart by the order of calls; inpainting maps the
        condition tokens as a second copy of the grid."""
        from rpg.attention.joint_flux2 import regional_flux2

        del num_images
        if self.inpainting:
            # Flux2KleinInpaintPipeline: [text | noisy image | condition image], both on the grid.
            regions.grid_copies = 2
        return regional_flux2(
            self.pipe.transformer, regions, negative_prompt_embeds=negative if guidance else None
        )

    def hook_inputs(
        self, guidance: bool, negative: torch.Tensor | None, num_images: int
    ) -> dict[str, Any]:
        return {"negative_prompt_embeds": negative if guidance else None}
